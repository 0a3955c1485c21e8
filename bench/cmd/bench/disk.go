package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/gatewayz/caddy-gatewayz/bench/mock"
)

// diskResult is what N metered requests added to the gateway's database
// files (the bbolt file and what lies beside it, such as its WAL).
type diskResult struct {
	requests      int64
	before, after fileUse
}

// fileUse is the size of files: apparent (st_size) and allocated
// (st_blocks). bbolt grows its file ahead of use in large sparse steps, so
// the allocated bytes follow the pages really written more closely.
type fileUse struct{ size, alloc int64 }

// perRequest is the growth per request, apparent and allocated.
func (d diskResult) perRequest() (size, alloc float64) {
	if d.requests <= 0 {
		return 0, 0
	}
	n := float64(d.requests)
	return float64(d.after.size-d.before.size) / n, float64(d.after.alloc-d.before.alloc) / n
}

// dbFiles sums the files whose names start with the database file's name.
func dbFiles(db string) (fileUse, error) {
	var u fileUse
	ents, err := os.ReadDir(filepath.Dir(db))
	if err != nil {
		return u, err
	}
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), filepath.Base(db)) {
			continue
		}
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join(filepath.Dir(db), e.Name()), &st); err != nil {
			return u, err
		}
		u.size += st.Size
		u.alloc += st.Blocks * 512
	}
	if u.size == 0 {
		return u, fmt.Errorf("no database files at %s", db)
	}
	return u, nil
}

// settleWait is how long the store is given to commit the last
// settlements before the files are measured again.
const settleWait = 2 * time.Second

// diskPerRequest sends the as-shipped gateway metered JSON requests (short
// answer, 32 connections) for cfg.diskDuration and measures its database
// files before and after.
func (h *harness) diskPerRequest(ctx context.Context, rn runner) (*diskResult, error) {
	t := h.shipGateway
	if t == nil || h.cfg.diskDuration <= 0 {
		return nil, nil
	}
	db := h.dbPath(setupShipped)
	time.Sleep(settleWait)
	var d diskResult
	var err error
	if d.before, err = dbFiles(db); err != nil {
		return nil, err
	}
	l := newLoad(setupShipped, mock.AnswerShort, false, 32)
	s, err := rn.run(ctx, t.addr, h.headersFor(l), l, 0, h.cfg.diskDuration)
	if err != nil {
		return nil, err
	}
	t.proc.trimLog()
	d.requests = s.requests
	time.Sleep(settleWait)
	if d.after, err = dbFiles(db); err != nil {
		return nil, err
	}
	return &d, nil
}
