package storage

import (
	"bytes"
	"encoding/json"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

var encodeStrings = []string{
	"", "gpt-4o-mini", "chatcmpl-0123456789", `quote " and \ backslash`,
	"<script>&amp;</script>", "tab\tnew\nline\rcr\bbs\fff", "\x00\x01\x1f\x7f",
	"héllo wörld", "模型-😀", "\u2028line\u2029para", "bad \xff\xfe utf-8 \xc3", "\xe2\x80", "trailing \\",
}

var encodeTimes = []time.Time{
	{},
	time.Date(2026, 11, 25, 9, 46, 28, 123456789, time.UTC),
	time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
	time.Date(2026, 1, 1, 0, 0, 0, 100, time.UTC),
	time.Date(2026, 6, 1, 12, 0, 0, 0, time.FixedZone("X", 5*3600+1800)),
	time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC),
	time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC),
	time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC),
}

// sameAsMarshal checks that an append encoder gives json.Marshal's bytes
// (or its error), after a non-empty prefix it must keep.
func sameAsMarshal(t *testing.T, v any, enc func([]byte) ([]byte, error)) {
	t.Helper()
	want, werr := json.Marshal(v)
	got, gerr := enc([]byte("prefix"))
	if (werr != nil) != (gerr != nil) {
		t.Fatalf("%+v: error %v, json.Marshal error %v", v, gerr, werr)
	}
	if werr != nil {
		return
	}
	if !bytes.HasPrefix(got, []byte("prefix")) || !bytes.Equal(got[len("prefix"):], want) {
		t.Fatalf("%+v:\n got %s\nwant %s", v, got, want)
	}
}

func TestEncodeMatchesMarshal(t *testing.T) {
	ints := []int64{0, 1, -1, 42, -60, math.MaxInt64, math.MinInt64}
	for i, s := range encodeStrings {
		for j, tm := range encodeTimes {
			n := ints[(i+j)%len(ints)]
			e := LedgerEntry{ID: n, UserID: int64(i), Kind: LedgerKind(s), Amount: -n, BalanceAfter: n,
				KeyID: ints[(i+2*j)%len(ints)], RequestID: s, IdempotencyKey: encodeStrings[j%len(encodeStrings)], Note: s, Time: tm}
			sameAsMarshal(t, &e, func(b []byte) ([]byte, error) { return appendLedgerEntry(b, &e) })
			e2 := LedgerEntry{ID: 1, Kind: LedgerCharge, Time: tm} // omitted fields
			sameAsMarshal(t, &e2, func(b []byte) ([]byte, error) { return appendLedgerEntry(b, &e2) })
			r := UsageRecord{UserID: n, KeyID: -n, Model: s, PromptTokens: int64(i), CompletionTokens: n, TotalTokens: int64(j),
				Credits: n, RequestID: encodeStrings[j%len(encodeStrings)], Time: tm, Status: int(n % 1000), Estimated: (i+j)%2 == 0, Endpoint: s,
				CachedTokens: int64(j), CacheWriteTokens: n}
			sameAsMarshal(t, &r, func(b []byte) ([]byte, error) { return appendUsageRecord(b, &r) })
		}
	}
}

// Random strings, invalid UTF-8 included, escape as json.Marshal does.
func TestEncodeRandomStrings(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	alphabet := []string{"a", "Z", "\"", "\\", "<", ">", "&", "\x00", "\x1f", "\x7f", "\u00e9", "\u2028", "\u2029", "😀", "\xff", "\xe2\x80", "\xed\xa0\x80", " "}
	for range 2000 {
		var b []byte
		for range rng.IntN(12) {
			b = append(b, alphabet[rng.IntN(len(alphabet))]...)
		}
		s := string(b)
		want, _ := json.Marshal(s)
		if got := appendJSONString(nil, s); !bytes.Equal(got, want) {
			t.Fatalf("%q: got %s, want %s", s, got, want)
		}
	}
}

// Records written by the committer read back as what was settled.
func TestSettledRecordsRoundTrip(t *testing.T) {
	s := openTestStore(t, t.TempDir()+"/gw.db")
	defer s.Close()
	u, k := register(t, s, "enc@example.com", 1_000_000)
	for i, m := range encodeStrings {
		r, err := s.Reserve(t.Context(), ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 10})
		if err != nil {
			t.Fatal(err)
		}
		rec := UsageRecord{Model: m, RequestID: m + "-id", PromptTokens: int64(i), TotalTokens: int64(2 * i), Status: 200, Estimated: i%2 == 1, Endpoint: m,
			Time: time.Date(2026, 3, 1, 0, 0, i, 0, time.UTC)}
		if _, _, err := s.Settle(t.Context(), r, int64(i%3), rec); err != nil {
			t.Fatal(err)
		}
	}
	recs, err := s.ListUsage(t.Context(), UsageFilter{UserID: u.ID})
	if err != nil || len(recs) != len(encodeStrings) {
		t.Fatalf("ListUsage: %d records, %v", len(recs), err)
	}
	for i, r := range recs {
		j := len(recs) - 1 - i
		want := UsageRecord{UserID: u.ID, KeyID: k.ID, Model: encodeStrings[j], RequestID: encodeStrings[j] + "-id", PromptTokens: int64(j),
			TotalTokens: int64(2 * j), Credits: int64(j % 3), Status: 200, Estimated: j%2 == 1, Endpoint: encodeStrings[j],
			Time: time.Date(2026, 3, 1, 0, 0, j, 0, time.UTC)}
		// Invalid UTF-8 reads back as U+FFFD, as with json.Marshal.
		var norm UsageRecord
		raw, _ := json.Marshal(&want)
		if err := json.Unmarshal(raw, &norm); err != nil {
			t.Fatal(err)
		}
		if !r.Time.Equal(norm.Time) || r.Model != norm.Model || r.RequestID != norm.RequestID || r.Endpoint != norm.Endpoint ||
			r.Credits != norm.Credits || r.TotalTokens != norm.TotalTokens || r.PromptTokens != norm.PromptTokens ||
			r.Estimated != norm.Estimated || r.UserID != norm.UserID || r.KeyID != norm.KeyID {
			t.Fatalf("record %d: got %+v, want %+v", j, r, norm)
		}
	}
	if err := s.VerifyLedger(t.Context()); err != nil {
		t.Fatal(err)
	}
	const note = "note \\ \n \u2028 <&>"
	if _, _, err := s.AddCredits(t.Context(), u.ID, 5, LedgerTopUp, "idem <1>", note); err != nil {
		t.Fatal(err)
	}
	entries, err := s.Ledger(t.Context(), u.ID)
	if err != nil {
		t.Fatal(err)
	}
	var wantIDs, gotIDs []string
	for i, m := range encodeStrings {
		if i%3 != 0 { // charged
			raw, _ := json.Marshal(m + "-id")
			var norm string
			json.Unmarshal(raw, &norm)
			wantIDs = append(wantIDs, norm)
		}
	}
	for _, e := range entries {
		switch e.Kind {
		case LedgerCharge:
			if e.KeyID != k.ID || e.Amount >= 0 || e.Time.IsZero() {
				t.Fatalf("charge entry %+v", e)
			}
			gotIDs = append(gotIDs, e.RequestID)
		case LedgerTopUp:
			if e.IdempotencyKey != "idem <1>" || e.Note != note || e.Amount != 5 || e.KeyID != 0 || e.RequestID != "" {
				t.Fatalf("top-up entry %+v", e)
			}
		}
	}
	if !slices.Equal(gotIDs, wantIDs) {
		t.Fatalf("charge request ids %q, want %q", gotIDs, wantIDs)
	}
	// A time json.Marshal cannot encode is refused up front, changing nothing.
	r, _ := s.Reserve(t.Context(), ReserveRequest{UserID: u.ID, KeyID: k.ID, Credits: 10})
	if _, _, err := s.Settle(t.Context(), r, 1, UsageRecord{Model: "m", Time: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}); err == nil {
		t.Fatal("year 10000 accepted")
	}
	if err := s.Refund(t.Context(), r); err != nil {
		t.Fatalf("reservation not left open after a refused settle: %v", err)
	}
}
