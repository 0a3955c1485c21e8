package admin

import (
	"net/http/httptest"
	"testing"

	"go.uber.org/zap"

	"github.com/gatewayz/caddy-gatewayz/caddymodule"
	"github.com/gatewayz/caddy-gatewayz/storage"
)

// withoutHotBackup is the gatewayz app with its store seen only through
// storage.Store, as a backend without a hot backup (PostgreSQL) is.
type withoutHotBackup struct{ *caddymodule.App }

func (a withoutHotBackup) Store() storage.Store { return struct{ storage.Store }{a.App.Store()} }

func TestBackup(t *testing.T) {
	h, app := newTestHandler(t, testAdminKey)
	req := httptest.NewRequest("GET", "/admin/backup", nil)
	req.Header.Set("Authorization", "Bearer "+testAdminKey)
	rec := httptest.NewRecorder()
	h.serve(rec, req)
	if rec.Code != 200 || rec.Header().Get("Content-Type") != "application/octet-stream" || rec.Body.Len() == 0 {
		t.Fatalf("backup of the bbolt store: %d %q, %d bytes", rec.Code, rec.Header().Get("Content-Type"), rec.Body.Len())
	}

	// A store without a hot backup answers 501 in the API's error shape,
	// saying what to use instead, and audits nothing.
	before, err := app.Store().VerifyAudit(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	other := &Handler{}
	other.setup(withoutHotBackup{app}, zap.NewNop())
	code, body, _ := call(t, other, "GET", "/admin/backup", testAdminKey, nil)
	mustStatus(t, "backup without a hot backup", code, 501, body)
	if body["code"] != "backup_not_supported" || body["detail"] != errNoHotBackup.Detail {
		t.Fatalf("body %v", body)
	}
	if after, err := app.Store().VerifyAudit(t.Context()); err != nil || after != before {
		t.Fatalf("audit entries %d -> %d, %v", before, after, err)
	}
}
