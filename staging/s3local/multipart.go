package s3local

import (
	"crypto/md5"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

var uploadIDPattern = regexp.MustCompile(`^[0-9a-f]{32}$`)

type upload struct {
	Bucket string `json:"bucket"`
	Key    string `json:"key"`
}

func (s *Server) uploadDir(id string) (string, upload, error) {
	if !uploadIDPattern.MatchString(id) {
		return "", upload{}, errors.New("NoSuchUpload: " + id)
	}
	d := filepath.Join(s.dir, ".uploads", id)
	b, err := os.ReadFile(filepath.Join(d, "upload.json"))
	if err != nil {
		return "", upload{}, errors.New("NoSuchUpload: " + id)
	}
	var u upload
	if err := json.Unmarshal(b, &u); err != nil {
		return "", upload{}, errors.New("NoSuchUpload: " + id)
	}
	return d, u, nil
}

func (s *Server) initiate(w http.ResponseWriter, bucket, key string) error {
	if _, err := s.bucketDir(bucket); err != nil {
		return err
	}
	id := RandomKey(32)
	d := filepath.Join(s.dir, ".uploads", id)
	if err := os.Mkdir(d, 0o700); err != nil {
		return err
	}
	b, _ := json.Marshal(upload{Bucket: bucket, Key: key})
	if err := os.WriteFile(filepath.Join(d, "upload.json"), b, 0o600); err != nil {
		return err
	}
	writeXML(w, struct {
		XMLName  xml.Name `xml:"InitiateMultipartUploadResult"`
		Bucket   string   `xml:"Bucket"`
		Key      string   `xml:"Key"`
		UploadID string   `xml:"UploadId"`
	}{Bucket: bucket, Key: key, UploadID: id})
	return nil
}

func (s *Server) uploadPart(w http.ResponseWriter, r *http.Request, a *auth, bucket, id, number string) error {
	d, u, err := s.uploadDir(id)
	if err != nil {
		return err
	}
	if u.Bucket != bucket {
		return errors.New("NoSuchUpload: " + id)
	}
	n, err := strconv.Atoi(number)
	if err != nil || n < 1 || n > 10000 {
		return fmt.Errorf("InvalidArgument: partNumber %q", number)
	}
	body, err := a.body(r)
	if err != nil {
		return err
	}
	tmp, _, sum, err := receive(d, body)
	if err != nil {
		return bodyError(err)
	}
	if want := r.Header.Get("Content-MD5"); want != "" && want != b64(sum) {
		os.Remove(tmp)
		return errors.New("InvalidArgument: Content-MD5 does not match the part")
	}
	etag := hex.EncodeToString(sum)
	if err := os.Rename(tmp, filepath.Join(d, fmt.Sprintf("part-%05d-%s", n, etag))); err != nil {
		return err
	}
	w.Header().Set("ETag", `"`+etag+`"`)
	return nil
}

func (s *Server) complete(w http.ResponseWriter, r *http.Request, a *auth, bucket, key, id string) error {
	d, u, err := s.uploadDir(id)
	if err != nil {
		return err
	}
	if u.Bucket != bucket || u.Key != key {
		return errors.New("NoSuchUpload: " + id)
	}
	bd, err := s.bucketDir(bucket)
	if err != nil {
		return err
	}
	body, err := a.body(r)
	if err != nil {
		return err
	}
	var req struct {
		Parts []struct {
			PartNumber int    `xml:"PartNumber"`
			ETag       string `xml:"ETag"`
		} `xml:"Part"`
	}
	if err := xml.NewDecoder(io.LimitReader(body, 4<<20)).Decode(&req); err != nil {
		return fmt.Errorf("MalformedXML: %v", err)
	}
	if len(req.Parts) == 0 {
		return errors.New("MalformedXML: no parts")
	}
	out, err := os.CreateTemp(bd, ".incoming-*")
	if err != nil {
		return err
	}
	fail := func(e error) error { out.Close(); os.Remove(out.Name()); return e }
	etags := md5.New()
	var size int64
	buf := make([]byte, 1<<20)
	for i, p := range req.Parts {
		if i > 0 && p.PartNumber <= req.Parts[i-1].PartNumber {
			return fail(errors.New("InvalidPartOrder: parts must ascend"))
		}
		etag := strings.Trim(p.ETag, `"`)
		f, err := os.Open(filepath.Join(d, fmt.Sprintf("part-%05d-%s", p.PartNumber, etag)))
		if err != nil {
			return fail(fmt.Errorf("InvalidPart: part %d with ETag %s", p.PartNumber, etag))
		}
		n, err := io.CopyBuffer(out, f, buf)
		f.Close()
		if err != nil {
			return fail(err)
		}
		size += n
		raw, _ := hex.DecodeString(etag)
		etags.Write(raw)
	}
	if err := out.Close(); err != nil {
		return fail(err)
	}
	m := meta{Key: key, Size: size, ETag: fmt.Sprintf("%s-%d", hex.EncodeToString(etags.Sum(nil)), len(req.Parts)), Modified: time.Now().UTC()}
	if err := s.install(bd, out.Name(), m); err != nil {
		os.Remove(out.Name())
		return err
	}
	os.RemoveAll(d)
	writeXML(w, struct {
		XMLName xml.Name `xml:"CompleteMultipartUploadResult"`
		Bucket  string   `xml:"Bucket"`
		Key     string   `xml:"Key"`
		ETag    string   `xml:"ETag"`
	}{Bucket: bucket, Key: key, ETag: `"` + m.ETag + `"`})
	return nil
}

func (s *Server) abort(w http.ResponseWriter, id string) error {
	d, _, err := s.uploadDir(id)
	if err != nil {
		return err
	}
	os.RemoveAll(d)
	w.WriteHeader(http.StatusNoContent)
	return nil
}
