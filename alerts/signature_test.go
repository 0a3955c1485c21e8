package alerts

import (
	"errors"
	"testing"
	"time"
)

func TestSignVerify(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	body := []byte(`{"id":"evt_1","type":"ping"}`)
	good := Sign("whsec_test", now, body)
	if good[:13] != "t=1800000000," {
		t.Fatalf("header %q does not start with the timestamp", good)
	}
	tests := []struct {
		name      string
		secret    string
		header    string
		body      []byte
		tolerance time.Duration
		at        time.Time
		want      error
	}{
		{"valid", "whsec_test", good, body, 5 * time.Minute, now, nil},
		{"valid among several", "whsec_test", good + ",v1=00ff", body, 5 * time.Minute, now, nil},
		{"wrong secret", "whsec_other", good, body, 5 * time.Minute, now, ErrSignatureMismatch},
		{"body changed", "whsec_test", good, []byte(`{"id":"evt_2","type":"ping"}`), 5 * time.Minute, now, ErrSignatureMismatch},
		{"timestamp changed", "whsec_test", "t=1800000001" + good[12:], body, 5 * time.Minute, now, ErrSignatureMismatch},
		{"too old", "whsec_test", good, body, 5 * time.Minute, now.Add(6 * time.Minute), ErrSignatureExpired},
		{"from the future", "whsec_test", good, body, 5 * time.Minute, now.Add(-6 * time.Minute), ErrSignatureExpired},
		{"no tolerance check", "whsec_test", good, body, 0, now.Add(time.Hour), nil},
		{"no v1", "whsec_test", "t=1800000000", body, 0, now, ErrSignatureMalformed},
		{"no t", "whsec_test", good[13:], body, 0, now, ErrSignatureMalformed},
		{"not hex", "whsec_test", "t=1800000000,v1=zz", body, 0, now, ErrSignatureMalformed},
		{"garbage", "whsec_test", "garbage", body, 0, now, ErrSignatureMalformed},
		{"empty", "whsec_test", "", body, 0, now, ErrSignatureMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := Verify(tc.secret, tc.header, tc.body, tc.tolerance, tc.at); !errors.Is(err, tc.want) {
				t.Fatalf("Verify = %v, want %v", err, tc.want)
			}
		})
	}
}

func FuzzVerify(f *testing.F) {
	f.Add("t=1800000000,v1=00", []byte("{}"))
	f.Add("", []byte(""))
	f.Fuzz(func(t *testing.T, header string, body []byte) {
		_ = Verify("s", header, body, time.Minute, time.Unix(1_800_000_000, 0))
		if Verify("s", Sign("s", time.Unix(1_800_000_000, 0), body), body, time.Minute, time.Unix(1_800_000_000, 0)) != nil {
			t.Fatal("own signature does not verify")
		}
	})
}
