package admin

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// actBackup is the audit action of a database backup.
const actBackup = "admin.backup"

// backupFlushTimeout bounds the wait for pending settlements to become
// durable before the copy starts.
const backupFlushTimeout = 10 * time.Second

// errNoHotBackup answers a backup request on a store without a hot
// backup (a database server, whose own tools back it up).
var errNoHotBackup = newError(http.StatusNotImplemented, "backup_not_supported",
	"This storage backend has no hot backup over the API: back the database up with its own tools (for PostgreSQL, pg_dump)")

// backup streams a consistent hot copy of the whole database (GET
// /admin/backup) from a store that can make one (storage.HotBackuper: the
// embedded bbolt file, copied in one read transaction, so it is a valid
// database file as of one instant while the gateway keeps serving).
// Settlements accepted before the request are flushed first so they are
// part of the copy. Restoring is: stop Caddy, replace the db file with the
// copy, start Caddy (see docs/operations.md).
func (h *Handler) backup(w http.ResponseWriter, r *http.Request) {
	st, ok := h.app.Store().(storage.HotBackuper)
	if !ok {
		writeErr(w, errNoHotBackup)
		return
	}
	if f, ok := st.(storage.Flusher); ok {
		fctx, cancel := context.WithTimeout(r.Context(), backupFlushTimeout)
		err := f.Flush(fctx)
		cancel()
		if err != nil {
			h.fail(w, r, err)
			return
		}
	}

	name := fmt.Sprintf("gatewayz-%s.db", h.now().UTC().Format("20060102T150405Z"))
	hdr := w.Header()
	hdr.Set("Content-Type", "application/octet-stream")
	hdr.Set("Content-Disposition", `attachment; filename="`+name+`"`)
	hdr.Set("Cache-Control", "no-store")
	hdr.Set("X-Content-Type-Options", "nosniff")
	// The status is sent with the first bytes of the copy, so a failure to
	// start the read transaction can still be answered with an error.
	bw := &backupWriter{w: w}
	n, err := st.Backup(r.Context(), bw)
	if err != nil {
		if !bw.started {
			hdr.Del("Content-Disposition")
			hdr.Del("Content-Type")
			h.fail(w, r, err)
			return
		}
		// Headers are gone: log and cut the stream short, so the client
		// sees a truncated body rather than a file that looks complete.
		if r.Context().Err() == nil && !errors.Is(err, context.Canceled) {
			h.logger.Error("writing backup", zap.Int64("bytes", n), zap.Error(err))
		}
		panic(http.ErrAbortHandler)
	}
	h.auditAs(r, auditActorAdmin, &storage.AuditEntry{
		Action:  actBackup,
		Details: map[string]any{"bytes": n, "file": name},
	})
}

// backupWriter sends the 200 header with the first write.
type backupWriter struct {
	w       http.ResponseWriter
	started bool
}

func (b *backupWriter) Write(p []byte) (int, error) {
	if !b.started {
		b.started = true
		b.w.WriteHeader(http.StatusOK)
	}
	return b.w.Write(p)
}
