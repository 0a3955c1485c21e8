package storage

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestCrashKeepsLedgerConsistent kills (SIGKILL) a process that is settling
// with real fsync, then checks the reopened store: the ledger adds up to
// every stored balance, and everything reported durable survived. In
// "flush" mode the child reports settlements durable after Flush (applied
// to the database file) and checkpoints every 2ms as well, so the kill can
// land in a checkpoint; in "log" mode once they are synced to the
// write-ahead log, with no timed checkpoint (only the log's size bound
// applies it now and then), so the reopened store has the latest ones only
// by replaying the log.
func TestCrashKeepsLedgerConsistent(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns a child process")
	}
	for _, mode := range []string{"flush", "log"} {
		t.Run(mode, func(t *testing.T) { crashAndCheck(t, mode) })
	}
}

func crashAndCheck(t *testing.T, mode string) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "crash.db")
	s := openTestStore(t, path)
	const initial = 1_000_000_000
	u, k := register(t, s, "crash@example.com", initial)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), "GW_CRASH_DB="+path, "GW_CRASH_MODE="+mode, fmt.Sprintf("GW_CRASH_IDS=%d,%d", u.ID, k.ID))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Read checkpoints until EOF; after the 20th, kill the child at a
	// random moment (it keeps settling meanwhile). Every checkpoint read
	// was printed after its Flush returned, so it is durable.
	var durableCharged, durableCount int64
	checkpoints := 0
	twenty := make(chan struct{})
	eof := make(chan struct{})
	go func() {
		defer close(eof)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) != 3 || f[0] != "durable" {
				continue
			}
			durableCount, _ = strconv.ParseInt(f[1], 10, 64)
			durableCharged, _ = strconv.ParseInt(f[2], 10, 64)
			if checkpoints++; checkpoints == 20 {
				close(twenty)
			}
		}
	}()
	select {
	case <-twenty:
		time.Sleep(time.Duration(rand.IntN(20_000)) * time.Microsecond)
	case <-eof:
	}
	cmd.Process.Kill()
	<-eof
	cmd.Wait()
	if checkpoints < 20 {
		t.Fatalf("child reported %d checkpoints", checkpoints)
	}

	s = openTestStore(t, path)
	defer s.Close()
	if err := s.VerifyLedger(ctx); err != nil {
		t.Fatal(err)
	}
	b := mustBalance(t, s, u.ID)
	if b.Reserved != 0 {
		t.Fatalf("reservations survived the crash: %+v", b)
	}
	if lost := b.Credits - (initial - durableCharged); lost > 0 {
		t.Fatalf("balance %d: %d durable credits of charges lost", b.Credits, lost)
	}
	key, err := s.GetKey(ctx, k.ID)
	if err != nil || key.RequestsUsed < durableCount {
		t.Fatalf("requests_used %d < durable %d (%v)", key.RequestsUsed, durableCount, err)
	}
	usage, err := s.ListUsage(ctx, UsageFilter{UserID: u.ID})
	if err != nil || int64(len(usage)) != key.RequestsUsed {
		t.Fatalf("usage records %d, requests_used %d (%v)", len(usage), key.RequestsUsed, err)
	}
	t.Logf("crash after %d durable settlements; %d committed in all", durableCount, key.RequestsUsed)
}

// TestCrashChild is the process TestCrashKeepsLedgerConsistent kills.
func TestCrashChild(t *testing.T) {
	path := os.Getenv("GW_CRASH_DB")
	if path == "" {
		t.Skip("run by TestCrashKeepsLedgerConsistent")
	}
	var uid, kid int64
	fmt.Sscanf(os.Getenv("GW_CRASH_IDS"), "%d,%d", &uid, &kid)
	ctx := context.Background()
	mode := os.Getenv("GW_CRASH_MODE")
	opts := Options{CommitWindow: 200 * time.Microsecond, CheckpointInterval: 2 * time.Millisecond}
	if mode == "log" {
		opts.CheckpointInterval = time.Hour
	}
	s, err := Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	durable := s.Flush
	if mode == "log" {
		durable = s.c.sync
	}
	var count, charged int64
	for i := 0; ; i++ {
		r, err := s.Reserve(ctx, ReserveRequest{UserID: uid, KeyID: kid, Credits: 10})
		if err != nil {
			t.Fatal(err)
		}
		c, _, err := s.Settle(ctx, r, int64(i%11), UsageRecord{Model: "m"})
		if err != nil {
			t.Fatal(err)
		}
		count++
		charged += c
		if i%500 == 499 {
			if err := durable(ctx); err != nil {
				t.Fatal(err)
			}
			fmt.Printf("durable %d %d\n", count, charged)
		}
	}
}
