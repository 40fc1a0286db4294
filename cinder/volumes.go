package cinder

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack/blockstorage/v3/attachments"
	"github.com/gophercloud/gophercloud/v2/openstack/blockstorage/v3/volumes"

	"github.com/cinderport/cinderport/jobs"
)

// Cinder's metadata keys for the read-only flag and the attach mode: they
// live in the volume's admin metadata and show among its metadata.
const (
	metaReadOnly   = "readonly"
	metaAttachMode = "attached_mode"
)

func isErrorStatus(s string) bool { return s == "error" || strings.HasPrefix(s, "error_") }

// toVolume converts a Cinder volume; the admin-metadata keys become
// ReadOnly instead of metadata. Attachments are the completed ones Cinder's
// volume view lists (see withAttachments for the others).
func toVolume(v *volumes.Volume) jobs.Volume {
	md := make(map[string]string, len(v.Metadata))
	ro := false
	for k, x := range v.Metadata {
		switch k {
		case metaReadOnly:
			ro = strings.EqualFold(x, "true")
		case metaAttachMode:
		default:
			md[k] = x
		}
	}
	out := jobs.Volume{ID: v.ID, Name: v.Name, Status: v.Status, SizeGiB: v.Size, VolumeType: v.VolumeType,
		Zone: v.AvailabilityZone, Multiattach: v.Multiattach, ReadOnly: ro, Metadata: md, Created: v.CreatedAt}
	for _, a := range v.Attachments {
		out.Attachments = append(out.Attachments, jobs.VolumeAttachment{ID: a.AttachmentID, Host: a.HostName})
	}
	return out
}

// attachmentListMicroversion lists attachments by volume.
const attachmentListMicroversion = "3.27"

// withAttachments converts v with all its attachments. Cinder's volume view
// lists only completed attachments; one still reserved or attaching (a
// worker crashed before connecting) keeps the volume busy all the same, so
// a volume in a status that may hang on one is looked up in the
// attachments API too. Hosts are known for completed attachments only.
func (c *Client) withAttachments(ctx context.Context, v *volumes.Volume) (jobs.Volume, error) {
	out := toVolume(v)
	switch v.Status {
	case "reserved", "attaching", "in-use", "detaching", "error_attaching", "error_detaching":
	default:
		if len(v.Attachments) == 0 {
			return out, nil
		}
	}
	if !c.supports(attachmentListMicroversion) {
		return out, nil
	}
	pages, err := attachments.List(c.sc, attachments.ListOpts{VolumeID: v.ID}).AllPages(ctx)
	if err != nil {
		return jobs.Volume{}, classify("list attachments of volume "+v.ID, err)
	}
	all, err := attachments.ExtractAttachments(pages)
	if err != nil {
		return jobs.Volume{}, fmt.Errorf("list attachments of volume %s: %w", v.ID, err)
	}
	hosts := make(map[string]string, len(out.Attachments))
	for _, a := range out.Attachments {
		hosts[a.ID] = a.Host
	}
	out.Attachments = nil
	for _, a := range all {
		if a.VolumeID == v.ID && a.Status != "detached" && a.Status != "deleted" {
			out.Attachments = append(out.Attachments, jobs.VolumeAttachment{ID: a.ID, Host: hosts[a.ID]})
		}
	}
	return out, nil
}

// CreateVolume implements jobs.Volumes. The spec's volume type defaults to
// Config.VolumeType. A quota or an invalid spec fails permanently.
func (c *Client) CreateVolume(ctx context.Context, spec jobs.VolumeSpec) (jobs.Volume, error) {
	op := fmt.Sprintf("create volume %q of %d GiB", spec.Name, spec.SizeGiB)
	if spec.SizeGiB < 1 {
		return jobs.Volume{}, jobs.Permanentf("%s: the size must be at least 1 GiB", op)
	}
	vt := spec.VolumeType
	if vt == "" {
		vt = c.cfg.VolumeType
	}
	v, err := volumes.Create(ctx, c.sc, volumes.CreateOpts{Size: spec.SizeGiB, Name: spec.Name,
		AvailabilityZone: spec.Zone, VolumeType: vt, Metadata: spec.Metadata}, nil).Extract()
	if err != nil {
		return jobs.Volume{}, classify(op, err)
	}
	c.log.Info().Str("volume_id", v.ID).Str("name", spec.Name).Int("size_gib", spec.SizeGiB).Msg("volume created")
	return toVolume(v), nil
}

// GetVolume implements jobs.Volumes.
func (c *Client) GetVolume(ctx context.Context, id string) (jobs.Volume, error) {
	v, err := volumes.Get(ctx, c.sc, id).Extract()
	if err != nil {
		return jobs.Volume{}, classify("get volume "+id, err)
	}
	return c.withAttachments(ctx, v)
}

// metadataQuery lists volumes by metadata. Cinder evaluates the filter as
// a Python literal, which a JSON object of strings is.
type metadataQuery map[string]string

func (q metadataQuery) ToVolumeListQuery() (string, error) {
	if len(q) == 0 {
		return "", nil
	}
	b, err := json.Marshal(map[string]string(q))
	if err != nil {
		return "", err
	}
	return "?" + url.Values{"metadata": {string(b)}}.Encode(), nil
}

// FindVolumes implements jobs.Volumes: Cinder filters by metadata, and the
// result is checked again here for exact matches.
func (c *Client) FindVolumes(ctx context.Context, md map[string]string) ([]jobs.Volume, error) {
	pages, err := volumes.List(c.sc, metadataQuery(md)).AllPages(ctx)
	if err != nil {
		return nil, classify(fmt.Sprintf("find volumes with metadata %v", md), err)
	}
	all, err := volumes.ExtractVolumes(pages)
	if err != nil {
		return nil, fmt.Errorf("find volumes with metadata %v: %w", md, err)
	}
	var out []jobs.Volume
next:
	for i := range all {
		for k, x := range md {
			if all[i].Metadata[k] != x {
				continue next
			}
		}
		v, err := c.withAttachments(ctx, &all[i])
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

// waitFor polls volume id until done says it is finished or failed, with
// glance_store's backoff (PollInterval doubling to PollMaxInterval) within
// StateTransitionTimeout. A volume that disappears ends the wait with
// ErrNotFound; failed polls are retried until the timeout.
func (c *Client) waitFor(ctx context.Context, id, what string, done func(*volumes.Volume) (bool, error)) (*volumes.Volume, error) {
	wctx, cancel := context.WithTimeout(ctx, c.cfg.StateTransitionTimeout)
	defer cancel()
	delay := c.cfg.PollInterval
	var last *volumes.Volume
	var lastErr error
	for {
		v, err := volumes.Get(wctx, c.sc, id).Extract()
		if err == nil {
			last = v
			if ok, err := done(v); ok || err != nil {
				return v, err
			}
		} else if wctx.Err() == nil {
			lastErr = classify("get volume "+id, err)
			if errors.Is(lastErr, jobs.ErrNotFound) || jobs.IsPermanent(lastErr) {
				return nil, fmt.Errorf("wait for volume %s to %s: %w", id, what, lastErr)
			}
			c.log.Debug().Err(lastErr).Str("volume_id", id).Msg("poll volume: retrying")
		}
		select {
		case <-wctx.Done():
			if ctx.Err() != nil {
				return last, fmt.Errorf("wait for volume %s to %s: %w", id, what, ctx.Err())
			}
			status := "unknown"
			if last != nil {
				status = last.Status
			}
			if lastErr != nil {
				return last, fmt.Errorf("volume %s did not %s within %s (status %s): %w", id, what, c.cfg.StateTransitionTimeout, status, lastErr)
			}
			return last, fmt.Errorf("volume %s did not %s within %s (status %s)", id, what, c.cfg.StateTransitionTimeout, status)
		case <-time.After(delay):
		}
		delay = min(2*delay, c.cfg.PollMaxInterval)
	}
}

// WaitVolume implements jobs.Volumes.
func (c *Client) WaitVolume(ctx context.Context, id string, want ...string) (jobs.Volume, error) {
	v, err := c.waitFor(ctx, id, "become "+strings.Join(want, " or "), func(v *volumes.Volume) (bool, error) {
		if slices.Contains(want, v.Status) {
			return true, nil
		}
		if isErrorStatus(v.Status) {
			return false, jobs.Permanentf("volume %s is in status %s, want %s", id, v.Status, strings.Join(want, " or "))
		}
		return false, nil
	})
	if v == nil {
		return jobs.Volume{}, err
	}
	if err != nil {
		return toVolume(v), err
	}
	return c.withAttachments(ctx, v)
}

// ExtendVolume implements jobs.Volumes. A volume already at least sizeGiB
// is left alone, so a repeated call succeeds. An in-use volume is extended
// online (microversion 3.42); Cinder's failure to extend (error_extending)
// is permanent.
func (c *Client) ExtendVolume(ctx context.Context, id string, sizeGiB int) error {
	op := fmt.Sprintf("extend volume %s to %d GiB", id, sizeGiB)
	v, err := volumes.Get(ctx, c.sc, id).Extract()
	if err != nil {
		return classify(op, err)
	}
	if v.Size < sizeGiB {
		if v.Status == "in-use" && !c.supports(onlineExtendMicroversion) {
			return jobs.Permanentf("%s: it is in use and Cinder (up to %s) cannot extend attached volumes", op, c.maxVersion())
		}
		if err := volumes.ExtendSize(ctx, c.sc, id, volumes.ExtendSizeOpts{NewSize: sizeGiB}).ExtractErr(); err != nil {
			return c.stateError(ctx, op, id, err)
		}
		c.log.Info().Str("volume_id", id).Int("from_gib", v.Size).Int("to_gib", sizeGiB).Str("status", v.Status).Msg("extending volume")
	}
	_, err = c.waitFor(ctx, id, fmt.Sprintf("reach %d GiB", sizeGiB), func(v *volumes.Volume) (bool, error) {
		switch {
		case v.Status == "extending":
			return false, nil
		case isErrorStatus(v.Status):
			return false, jobs.Permanentf("%s: Cinder failed (status %s)", op, v.Status)
		case v.Size >= sizeGiB:
			return true, nil
		}
		return false, fmt.Errorf("%s: Cinder gave up (size %d GiB, status %s)", op, v.Size, v.Status)
	})
	return err
}

// SetMetadata implements jobs.Volumes (POST /volumes/{id}/metadata, which
// gophercloud lacks: it merges).
func (c *Client) SetMetadata(ctx context.Context, id string, md map[string]string) error {
	op := "set metadata of volume " + id
	_, err := c.sc.Post(ctx, c.sc.ServiceURL("volumes", id, "metadata"), map[string]any{"metadata": md}, nil,
		&gophercloud.RequestOpts{OkCodes: []int{http.StatusOK}})
	if err != nil {
		return c.stateError(ctx, op, id, err)
	}
	return nil
}

// SetReadOnly implements jobs.Volumes (the os-update_readonly_flag action,
// which gophercloud lacks).
func (c *Client) SetReadOnly(ctx context.Context, id string, readOnly bool) error {
	op := fmt.Sprintf("set read-only=%t on volume %s", readOnly, id)
	body := map[string]any{"os-update_readonly_flag": map[string]any{"readonly": readOnly}}
	_, err := c.sc.Post(ctx, c.sc.ServiceURL("volumes", id, "action"), body, nil,
		&gophercloud.RequestOpts{OkCodes: []int{http.StatusAccepted}})
	if err != nil {
		return c.stateError(ctx, op, id, err)
	}
	return nil
}

// DeleteVolume implements jobs.Volumes. A volume already gone, or already
// being deleted, is not an error; one still attached (or otherwise busy)
// is retryable.
func (c *Client) DeleteVolume(ctx context.Context, id string) error {
	op := "delete volume " + id
	err := volumes.Delete(ctx, c.sc, id, nil).ExtractErr()
	if err == nil {
		c.log.Info().Str("volume_id", id).Msg("volume deleted")
		return nil
	}
	if gophercloud.ResponseCodeIs(err, http.StatusNotFound) {
		return nil
	}
	err = c.stateError(ctx, op, id, err)
	if errors.Is(err, jobs.ErrNotFound) {
		return nil
	}
	return err
}

// stateError classifies a failed request on volume id. Cinder answers 400
// "… status must be …" when the volume's state forbids the request: while
// that state is one the volume leaves on its own (creating, reserved,
// attaching, in-use, detaching, extending, …) the failure is retryable; if
// the volume is being deleted or gone it is permanent and wraps
// jobs.ErrNotFound; in an error state it is permanent.
func (c *Client) stateError(ctx context.Context, op, id string, err error) error {
	_, out := c.volumeState(ctx, op, id, err)
	return out
}

// volumeState is stateError that also reports whether a retry may succeed
// soon (the volume is in a transitional state).
func (c *Client) volumeState(ctx context.Context, op, id string, err error) (transient bool, out error) {
	classified := classify(op, err)
	rc, ok := responseError(err)
	if !ok || rc.Actual != http.StatusBadRequest || !strings.Contains(strings.ToLower(faultMessage(rc.Body)), "status must be") {
		return false, classified
	}
	ae := newAPIError(rc)
	v, gerr := volumes.Get(ctx, c.sc, id).Extract()
	switch {
	case gophercloud.ResponseCodeIs(gerr, http.StatusNotFound):
		return false, jobs.Permanent(fmt.Errorf("%s: the volume is gone (%v): %w", op, ae, jobs.ErrNotFound))
	case gerr != nil:
		// The state cannot be checked now: let the caller try again later.
		return false, jobs.RetryAfter(fmt.Errorf("%s: %w", op, ae), c.cfg.AttachmentRetryInterval)
	case v.Status == "deleting":
		return false, jobs.Permanent(fmt.Errorf("%s: the volume is being deleted (%v): %w", op, ae, jobs.ErrNotFound))
	case isErrorStatus(v.Status):
		return false, jobs.Permanent(fmt.Errorf("%s: the volume is in status %s: %w", op, v.Status, ae))
	}
	return true, jobs.RetryAfter(fmt.Errorf("%s: the volume is %s: %w", op, v.Status, ae), c.cfg.AttachmentRetryInterval)
}
