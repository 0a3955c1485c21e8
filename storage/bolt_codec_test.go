package storage

import (
	"math"
	"reflect"
	"testing"
	"time"
)

var codecStrings = []string{
	"", "gpt-4o-mini", "chatcmpl-0123456789", `quote " and \ backslash`, "<script>&amp;</script>",
	"\x00\x01\x1f\x7f", "模型-😀", "bad \xff\xfe utf-8 \xc3", "550e8400-e29b-41d4-a716-446655440000",
	"550E8400-E29B-41D4-A716-446655440000", "550e8400-e29b-41d4-a716-44665544000g", "550e8400e29b-41d4-a716-4466554400001",
}

var codecTimes = []time.Time{
	time.Date(2026, 11, 25, 9, 46, 28, 123456789, time.UTC),
	time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
	time.Date(2026, 1, 1, 23, 59, 59, 999999999, time.UTC),
	time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC),
	time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC),
}

func TestUsageCodecRoundTrip(t *testing.T) {
	ints := []int64{0, 1, -1, 42, 300, math.MaxInt32, math.MaxInt64 / 4}
	names := map[uint32]string{0: ""}
	ids := map[string]uint32{"": 0}
	name := func(id uint32) (string, error) { return names[id], nil }
	for _, s := range codecStrings {
		if _, ok := ids[s]; !ok {
			ids[s] = uint32(len(ids))
			names[ids[s]] = s
		}
	}
	for i, s := range codecStrings {
		for j, tm := range codecTimes {
			n := ints[(i+j)%len(ints)]
			r := UsageRecord{UserID: 7, KeyID: n, Model: s, PromptTokens: int64(i), CompletionTokens: n, TotalTokens: int64(i) + n + int64(j),
				Credits: n, RequestID: codecStrings[(i+j)%len(codecStrings)], Time: tm, Status: int(n % 1000), Estimated: (i+j)%2 == 0,
				Endpoint: codecStrings[j], CachedTokens: int64(j), CacheWriteTokens: n}
			// Logged form: strings, time after the epoch.
			got, err := decodeUsage(appendUsageBinary([]byte{}, &r, time.Unix(0, 0), nil), 7, time.Unix(0, 0), noNames)
			if err != nil || !reflect.DeepEqual(got, r) {
				t.Fatalf("logged %+v\nread %+v, %v", r, got, err)
			}
			// Stored form: name ids, time after its day.
			day := RollupDay.Truncate(tm)
			v := appendUsageBinary(nil, &r, day, &usageNames{ids[r.Model], ids[r.Endpoint]})
			if got, err = decodeUsage(v, 7, day, name); err != nil || !reflect.DeepEqual(got, r) {
				t.Fatalf("stored %+v\nread %+v, %v", r, got, err)
			}
			// Every truncation fails instead of panicking or reading garbage.
			for cut := 0; cut < len(v); cut++ {
				if _, err := decodeUsage(v[:cut], 7, day, name); err == nil {
					t.Fatalf("%+v cut at %d of %d decoded", r, cut, len(v))
				}
			}
		}
	}
}

// A lowercase UUID request id takes 16 bytes; anything else is kept as
// the string it is.
func TestUUIDRequestIDs(t *testing.T) {
	for _, tc := range []struct {
		id   string
		uuid bool
	}{
		{"550e8400-e29b-41d4-a716-446655440000", true},
		{"00000000-0000-0000-0000-000000000000", true},
		{"550E8400-E29B-41D4-A716-446655440000", false},
		{"550e8400-e29b-41d4-a716-44665544000", false},
		{"550e8400-e29b-41d4-a716_446655440000", false},
		{"", false},
	} {
		u, ok := parseUUID(tc.id)
		if ok != tc.uuid || (ok && formatUUID(u[:]) != tc.id) {
			t.Errorf("parseUUID(%q) = %x, %v", tc.id, u, ok)
		}
	}
}

func TestLedgerCodecRoundTrip(t *testing.T) {
	for i, s := range codecStrings {
		for j, tm := range codecTimes[:3] {
			for _, kind := range []LedgerKind{LedgerGrant, LedgerTopUp, LedgerCharge, LedgerAdjust, LedgerKind(s)} {
				e := LedgerEntry{ID: int64(i*100 + j), UserID: 3, Kind: kind, Amount: int64(-i * j), BalanceAfter: int64(i + j),
					KeyID: int64(j), RequestID: s, IdempotencyKey: codecStrings[j], Note: s, Time: tm, Requests: int64(i)}
				v := appendLedgerBinary(nil, &e)
				got, err := decodeLedger(v, e.ID, 3)
				if err != nil || !reflect.DeepEqual(got, e) {
					t.Fatalf("%+v\nread %+v, %v", e, got, err)
				}
				for cut := 0; cut < len(v); cut++ {
					if _, err := decodeLedger(v[:cut], e.ID, 3); err == nil {
						t.Fatalf("%+v cut at %d of %d decoded", e, cut, len(v))
					}
				}
			}
		}
	}
	// An entry of the JSON encoding before the rollups reads as it was, a
	// charge covering one request.
	old := `{"id":9,"user_id":3,"kind":"charge","amount":-5,"balance_after":95,"key_id":2,"request_id":"r","time":"2026-11-25T09:46:28.123456789Z"}`
	got, err := decodeLedger([]byte(old), 9, 3)
	want := LedgerEntry{ID: 9, UserID: 3, Kind: LedgerCharge, Amount: -5, BalanceAfter: 95, KeyID: 2, RequestID: "r", Time: codecTimes[0], Requests: 1}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("JSON entry read as %+v, %v", got, err)
	}
}

func TestOutcome(t *testing.T) {
	for _, tc := range []struct {
		rec  UsageRecord
		want Outcome
	}{
		{UsageRecord{Status: 200}, OutcomeSuccess},
		{UsageRecord{Status: 200, Estimated: true}, OutcomeEstimated},
		{UsageRecord{Status: 499, Estimated: true}, OutcomeError},
		{UsageRecord{Status: 502}, OutcomeError},
		{UsageRecord{Status: 0}, OutcomeSuccess},
	} {
		if got := tc.rec.Outcome(); got != tc.want {
			t.Errorf("status %d estimated %v: %s, want %s", tc.rec.Status, tc.rec.Estimated, got, tc.want)
		}
	}
}

func TestPeriodNumbers(t *testing.T) {
	for _, tm := range []time.Time{
		time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 2, 28, 23, 59, 59, 999999999, time.UTC),
		time.Date(1969, 12, 31, 23, 30, 0, 0, time.UTC), time.Date(2026, 3, 1, 4, 0, 0, 0, time.FixedZone("X", 5*3600)),
	} {
		for _, p := range []RollupPeriod{RollupHour, RollupDay} {
			kind := periodKind(p)
			if got, want := periodStart(kind, periodNum(kind, tm)), p.Truncate(tm); !got.Equal(want) {
				t.Errorf("%s of %v: starts %v, want %v", p, tm, got, want)
			}
		}
	}
}

// FuzzDecodeUsage: any bytes decode or fail, never panic; what decodes
// encodes back to bytes that decode the same.
func FuzzDecodeUsage(f *testing.F) {
	r := UsageRecord{KeyID: 3, Model: "gpt-4o", PromptTokens: 9, TotalTokens: 9, RequestID: codecStrings[8], Time: codecTimes[0], Status: 200}
	f.Add(appendUsageBinary(nil, &r, time.Unix(0, 0), nil))
	f.Add(appendUsageBinary(nil, &r, RollupDay.Truncate(r.Time), &usageNames{1, 2}))
	f.Add([]byte(`{"user_id":1,"model":"m","timestamp":"2026-01-01T00:00:00Z"}`))
	name := func(id uint32) (string, error) { return string(rune('a' + id%26)), nil }
	f.Fuzz(func(t *testing.T, v []byte) {
		base := time.Unix(0, 0)
		got, err := decodeUsage(v, 1, base, name)
		if err != nil || (len(v) > 0 && v[0] == '{') || len(v) < 2 || v[1]&usageNameIDs != 0 {
			return
		}
		again, err := decodeUsage(appendUsageBinary(nil, &got, base, nil), 1, base, name)
		if err != nil || !reflect.DeepEqual(again, got) {
			t.Fatalf("%+v re-read as %+v, %v", got, again, err)
		}
	})
}

// FuzzDecodeLedger: as FuzzDecodeUsage, for ledger entries.
func FuzzDecodeLedger(f *testing.F) {
	e := LedgerEntry{Kind: LedgerCharge, Amount: -3, BalanceAfter: 7, KeyID: 1, Requests: 2, Time: codecTimes[0], Note: "n"}
	f.Add(appendLedgerBinary(nil, &e))
	f.Add([]byte(`{"kind":"grant","amount":5,"time":"2026-01-01T00:00:00Z"}`))
	f.Fuzz(func(t *testing.T, v []byte) {
		got, err := decodeLedger(v, 1, 1)
		if err != nil || (len(v) > 0 && v[0] == '{') {
			return
		}
		again, err := decodeLedger(appendLedgerBinary(nil, &got), 1, 1)
		if err != nil || !reflect.DeepEqual(again, got) {
			t.Fatalf("%+v re-read as %+v, %v", got, again, err)
		}
	})
}
