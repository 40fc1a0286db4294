package iscsi

import (
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
)

func TestNormalizePortal(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"10.0.0.1:3260", "10.0.0.1:3260"},
		{"10.0.0.1", "10.0.0.1:3260"},
		{"10.0.0.1:3261,1", "10.0.0.1:3261"},
		{"[fd00::1]:3260,2", "[fd00::1]:3260"},
		{"[fd00::1]", "[fd00::1]:3260"},
		{"fd00::1", "[fd00::1]:3260"},
		{"storage.example:3260", "storage.example:3260"},
		{" host ", "host:3260"},
		{"", ""},
		{":3260", ""},
		{"[x", ""},
	} {
		got, err := NormalizePortal(c.in)
		if (err != nil) != (c.want == "") || got != c.want {
			t.Errorf("NormalizePortal(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
}

func TestNegotiated(t *testing.T) {
	const recv = 262144
	for _, c := range []struct {
		name string
		got  map[string]string
		want params
		err  string
	}{
		{"tgtd defaults", map[string]string{"HeaderDigest": "None", "DataDigest": "None", "InitialR2T": "Yes", "ImmediateData": "Yes",
			"MaxBurstLength": "262144", "FirstBurstLength": "65536"},
			params{sendDSL: 8192, recvDSL: recv, maxBurst: 262144, firstBurst: 65536, initialR2T: true, immediateData: true}, ""},
		{"tuned, digests", map[string]string{"HeaderDigest": "CRC32C", "DataDigest": "CRC32C", "InitialR2T": "No", "ImmediateData": "Yes",
			"MaxBurstLength": "1048576", "FirstBurstLength": "262144", "MaxRecvDataSegmentLength": "262144"},
			params{headerDigest: true, dataDigest: true, sendDSL: 262144, recvDSL: recv, maxBurst: 1048576, firstBurst: 262144, immediateData: true}, ""},
		{"rejected lengths take the defaults, first burst within max burst", map[string]string{"MaxBurstLength": "Reject", "FirstBurstLength": "1048576", "ImmediateData": "No"},
			params{sendDSL: 8192, recvDSL: recv, maxBurst: 262144, firstBurst: 262144, initialR2T: true}, ""},
		{"lengths above our offer are cut", map[string]string{"MaxBurstLength": "16777215"},
			params{sendDSL: 8192, recvDSL: recv, maxBurst: offerMaxBurst, firstBurst: 65536, initialR2T: true, immediateData: true}, ""},
		{"digest we did not offer", map[string]string{"HeaderDigest": "MD5"}, params{}, "did not offer"},
		{"length out of range", map[string]string{"MaxRecvDataSegmentLength": "100"}, params{}, "out of range"},
		{"length not a number", map[string]string{"FirstBurstLength": "lots"}, params{}, "out of range"},
		{"error recovery", map[string]string{"ErrorRecoveryLevel": "2"}, params{}, "ErrorRecoveryLevel"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := negotiated(c.got, recv, true)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("err = %v, want one mentioning %q", err, c.err)
				}
				return
			}
			if err != nil || got != c.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, c.want)
			}
		})
	}
}

func TestAnswerProposal(t *testing.T) {
	for _, c := range [][3]string{
		{"InitialR2T", "Yes", "Yes"}, {"ImmediateData", "No", "No"}, {"DataPDUInOrder", "No", "Yes"},
		{"HeaderDigest", "CRC32C", "None"}, {"MaxBurstLength", "65536", "65536"}, {"X-vendor.key", "1", "NotUnderstood"},
	} {
		if got := answerProposal(c[0], c[1]); got != c[2] {
			t.Errorf("answerProposal(%s=%s) = %s, want %s", c[0], c[1], got, c[2])
		}
	}
}

func TestCHAPResponse(t *testing.T) {
	challenge := []byte{0xde, 0xad, 0xbe, 0xef}
	want := md5.Sum(append(append([]byte{7}, "s3cret"...), challenge...))
	if got := chapResponse(7, "s3cret", challenge); hex.EncodeToString(got) != hex.EncodeToString(want[:]) {
		t.Fatalf("chapResponse = %x, want %x", got, want)
	}
	for _, c := range []struct {
		in   string
		want string
	}{
		{"0xdeadbeef", "deadbeef"}, {"0Xabc", "0abc"}, {"0b3q2+7w==", "deadbeef"},
		{"deadbeef", ""}, {"0x", ""}, {"0xzz", ""}, {"0b!!", ""}, {"0x" + strings.Repeat("00", maxCHAPBinary+1), ""},
	} {
		got, err := decodeCHAPBinary(c.in)
		if (err != nil) != (c.want == "") || hex.EncodeToString(got) != c.want {
			t.Errorf("decodeCHAPBinary(%q) = %x, %v; want %s", c.in, got, err, c.want)
		}
	}
}

func TestAuthHidesSecrets(t *testing.T) {
	a := Auth{User: "alice", Secret: "alice-secret", TargetUser: "tgt", TargetSecret: "target-secret"}
	for _, s := range []string{a.String(), fmt.Sprintf("%v %+v %#v %s", a, a, a, a), fmt.Sprint(Config{Auth: a})} {
		if strings.Contains(s, "secret") {
			t.Errorf("%q shows a secret", s)
		}
	}
}

func TestParseSense(t *testing.T) {
	fixed := make([]byte, 18)
	fixed[0], fixed[2], fixed[12], fixed[13] = 0x70, 0x06, 0x29, 0x00
	for _, c := range []struct {
		b              []byte
		key, asc, ascq byte
		ok             bool
	}{
		{fixed, 6, 0x29, 0, true},
		{[]byte{0x72, 0x05, 0x24, 0x00}, 5, 0x24, 0, true},
		{[]byte{0x70, 0, 6}, 0, 0, 0, false},
		{nil, 0, 0, 0, false},
		{[]byte{0x7f, 1, 2, 3, 4}, 0, 0, 0, false},
	} {
		k, a, q, ok := parseSense(c.b)
		if k != c.key || a != c.asc || q != c.ascq || ok != c.ok {
			t.Errorf("parseSense(%x) = %x %x %x %v", c.b, k, a, q, ok)
		}
	}
}

func TestParseSendTargets(t *testing.T) {
	text := []byte("TargetName=iqn.a\x00TargetAddress=10.0.0.1:3260,1\x00TargetAddress=[fd00::1]:3260,1\x00TargetName=iqn.b\x00")
	got, err := parseSendTargets(text, "10.0.0.9:3260")
	if err != nil {
		t.Fatal(err)
	}
	want := []DiscoveredTarget{{"iqn.a", []string{"10.0.0.1:3260", "[fd00::1]:3260"}}, {"iqn.b", []string{"10.0.0.9:3260"}}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	if _, err := parseSendTargets([]byte("TargetAddress=10.0.0.1\x00"), "x:1"); err == nil {
		t.Error("an address before any name was accepted")
	}
}

func TestWriteTransfer(t *testing.T) {
	for _, c := range []struct {
		p    params
		want int
	}{
		// tgtd defaults: 8 KiB immediate and one 256 KiB R2T burst.
		{params{sendDSL: 8192, maxBurst: 262144, firstBurst: 65536, initialR2T: true, immediateData: true}, 270336},
		// InitialR2T=No with a large first burst: unsolicited only.
		{params{sendDSL: 262144, maxBurst: 262144, firstBurst: 262144, immediateData: true}, 262144},
		// InitialR2T=No with a small first burst: it plus one burst.
		{params{sendDSL: 8192, maxBurst: 262144, firstBurst: 65536, immediateData: true}, 327680},
		// No immediate data, InitialR2T=Yes: one burst.
		{params{sendDSL: 8192, maxBurst: 262144, firstBurst: 65536, initialR2T: true}, 262144},
		// Huge bursts are capped.
		{params{sendDSL: 1 << 20, maxBurst: 16 << 20, firstBurst: 16 << 20, immediateData: true}, maxWriteTransfer},
	} {
		if got := writeTransfer(c.p); got != c.want {
			t.Errorf("writeTransfer(%+v) = %d, want %d", c.p, got, c.want)
		}
	}
}
