package cinder

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack/blockstorage/v3/attachments"
	"github.com/gophercloud/gophercloud/v2/openstack/blockstorage/v3/volumes"

	"github.com/cinderport/cinderport/jobs"
)

// attachmentBody is an attachment as Cinder returns it. connection_info
// carries CHAP secrets: it is never logged.
type attachmentBody struct {
	ID             string          `json:"id"`
	Status         string          `json:"status"`
	AttachMode     string          `json:"attach_mode"`
	ConnectionInfo json.RawMessage `json:"connection_info"`
}

// Attach implements jobs.Volumes: it creates an attachment for this host's
// connector and returns the connection info. While the volume is in a
// transitional state (Cinder's 400 "… to reserve") it tries again, as
// glance_store does, up to AttachmentRetryAttempts times with a delay from
// AttachmentRetryInterval doubling to 10 s; then it gives up with a
// retryable error (jobs.RetryAfter). A volume being deleted, or gone, fails
// permanently with an error wrapping jobs.ErrNotFound; one in an error state
// fails permanently. Without microversion 3.54 it fails permanently, and so
// does a read-write attachment of a read-only volume (which Cinder's
// attachments API would grant).
func (c *Client) Attach(ctx context.Context, volumeID string, mode jobs.AttachMode) (jobs.Attachment, error) {
	op := fmt.Sprintf("attach volume %s (%s)", volumeID, mode)
	if mode != jobs.ReadWrite && mode != jobs.ReadOnly {
		return jobs.Attachment{}, jobs.Permanentf("%s: invalid mode", op)
	}
	if !c.supports(attachMicroversion) {
		return jobs.Attachment{}, jobs.Permanentf("%s: Cinder offers microversions up to %s; attachments need %s",
			op, c.maxVersion(), attachMicroversion)
	}
	if mode == jobs.ReadWrite {
		v, err := volumes.Get(ctx, c.sc, volumeID).Extract()
		if err != nil {
			return jobs.Attachment{}, classify(op, err)
		}
		if toVolume(v).ReadOnly {
			return jobs.Attachment{}, jobs.Permanentf("%s: the volume is read-only", op)
		}
	}
	body := map[string]any{"attachment": map[string]any{
		"volume_uuid": volumeID, "connector": c.connector.properties(), "mode": string(mode)}}
	delay := c.cfg.AttachmentRetryInterval
	for attempt := 1; ; attempt++ {
		var out struct {
			Attachment attachmentBody `json:"attachment"`
		}
		_, err := c.sc.Post(ctx, c.sc.ServiceURL("attachments"), body, &out,
			&gophercloud.RequestOpts{OkCodes: []int{http.StatusOK, http.StatusAccepted}})
		if err == nil {
			att, err := attachmentOf(volumeID, mode, out.Attachment)
			if err != nil {
				return jobs.Attachment{}, fmt.Errorf("%s: %w", op, err)
			}
			c.log.Debug().Str("volume_id", volumeID).Str("attachment_id", att.ID).Str("mode", string(mode)).
				Stringer("connection", att.Connection).Int("attempt", attempt).Msg("attachment created")
			return att, nil
		}
		transient, serr := c.volumeState(ctx, op, volumeID, err)
		if !transient {
			return jobs.Attachment{}, serr
		}
		if attempt >= c.cfg.AttachmentRetryAttempts {
			return jobs.Attachment{}, jobs.RetryAfter(fmt.Errorf("%s: still refused after %d attempts: %w", op, attempt, serr), delay)
		}
		c.log.Debug().Str("volume_id", volumeID).Int("attempt", attempt).Dur("delay", delay).Err(serr).
			Msg("attachment refused while the volume is busy: retrying")
		if sleep(ctx, delay, serr) != nil {
			return jobs.Attachment{}, fmt.Errorf("%s: %w", op, ctx.Err())
		}
		delay = min(2*delay, DefaultAttachmentRetryMax)
	}
}

// attachmentOf converts Cinder's answer. connection_info is either
// {"driver_volume_type": …, "data": {…}} or, as the attachments API returns
// it, the data with driver_volume_type among its keys.
func attachmentOf(volumeID string, mode jobs.AttachMode, a attachmentBody) (jobs.Attachment, error) {
	if a.ID == "" {
		return jobs.Attachment{}, errors.New("cinder returned an attachment without id")
	}
	conn, err := parseConnection(a.ConnectionInfo)
	if err != nil {
		return jobs.Attachment{}, fmt.Errorf("attachment %s: %w", a.ID, err)
	}
	return jobs.Attachment{ID: a.ID, VolumeID: volumeID, Mode: mode, Connection: conn}, nil
}

// parseConnection decodes an attachment's connection_info. Its errors never
// quote the input: it holds CHAP secrets.
func parseConnection(raw json.RawMessage) (jobs.Connection, error) {
	var ci map[string]any
	if len(raw) == 0 || json.Unmarshal(raw, &ci) != nil || ci == nil {
		return jobs.Connection{}, errors.New("no connection info (was a connector sent?)")
	}
	driver, _ := ci["driver_volume_type"].(string)
	if driver == "" {
		return jobs.Connection{}, errors.New("connection info names no driver_volume_type")
	}
	if data, ok := ci["data"].(map[string]any); ok {
		return jobs.Connection{Driver: driver, Data: data}, nil
	}
	data := make(map[string]any, len(ci))
	for k, v := range ci {
		if k != "driver_volume_type" {
			data[k] = v
		}
	}
	return jobs.Connection{Driver: driver, Data: data}, nil
}

// CompleteAttachment implements jobs.Volumes (os-complete: the volume
// becomes in-use).
func (c *Client) CompleteAttachment(ctx context.Context, attachmentID string) error {
	if err := attachments.Complete(ctx, c.sc, attachmentID).ExtractErr(); err != nil {
		return classify("complete attachment "+attachmentID, err)
	}
	return nil
}

// Detach implements jobs.Volumes: it deletes the attachment, and Cinder
// removes the export. An attachment already gone is not an error.
func (c *Client) Detach(ctx context.Context, attachmentID string) error {
	err := attachments.Delete(ctx, c.sc, attachmentID).ExtractErr()
	switch {
	case gophercloud.ResponseCodeIs(err, http.StatusNotFound):
		return nil
	case err != nil:
		return classify("delete attachment "+attachmentID, err)
	}
	c.log.Debug().Str("attachment_id", attachmentID).Msg("attachment deleted")
	return nil
}
