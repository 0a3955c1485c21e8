package storage

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	"go.etcd.io/bbolt"
)

// Per-key request counters (schema 3): a key's requests_used and
// last_used_at live only in bKeyUsage, a small fixed-size record beside the
// key, so the group committer bumps them without decoding and re-encoding
// the whole key record on every commit. The key's JSON is stored without
// them (the upgrade to schema 3 moved them out), so there is one copy of
// each counter at rest. Every reader goes through getKey or
// overlayKeyUsage; every writer through putKey.
//
// Key: key id (8 bytes). Value: requests used (8 bytes), then, if the key
// was ever used, last use as Unix seconds (8 bytes) and nanoseconds
// (4 bytes), all big-endian.

const (
	keyUsageShort = 8
	keyUsageLong  = 20
)

// appendKeyUsage appends the record of (used, last) to b.
func appendKeyUsage(b []byte, used int64, last *time.Time) []byte {
	b = binary.BigEndian.AppendUint64(b, uint64(used))
	if last != nil {
		b = binary.BigEndian.AppendUint64(b, uint64(last.Unix()))
		b = binary.BigEndian.AppendUint32(b, uint32(last.Nanosecond()))
	}
	return b
}

// decodeKeyUsage decodes a record written by appendKeyUsage. Times come
// back in UTC.
func decodeKeyUsage(v []byte) (used int64, last *time.Time, err error) {
	switch len(v) {
	case keyUsageShort, keyUsageLong:
	default:
		return 0, nil, fmt.Errorf("storage: corrupt key usage record")
	}
	used = int64(binary.BigEndian.Uint64(v))
	if len(v) == keyUsageLong {
		t := time.Unix(int64(binary.BigEndian.Uint64(v[8:])), int64(binary.BigEndian.Uint32(v[16:]))).UTC()
		last = &t
	}
	return used, last, nil
}

// overlayKeyUsage replaces k's counters with its key usage record, if any.
func overlayKeyUsage(tx *bbolt.Tx, k *APIKey) error {
	v := tx.Bucket(bKeyUsage).Get(id8(k.ID))
	if v == nil {
		return nil
	}
	used, last, err := decodeKeyUsage(v)
	if err != nil {
		return fmt.Errorf("%w of key %d", err, k.ID)
	}
	k.RequestsUsed, k.LastUsedAt = used, last
	return nil
}

// getKey reads key id (8 bytes) with its counters.
func getKey(tx *bbolt.Tx, id []byte, k *APIKey) error {
	if err := getJSON(tx.Bucket(bKeys), id, k); err != nil {
		return err
	}
	if err := overlayKeySpend(tx, k); err != nil {
		return err
	}
	return overlayKeyUsage(tx, k)
}

// putKey writes k: its counters to its key usage record, the rest to its
// JSON.
func putKey(tx *bbolt.Tx, k *APIKey) error {
	id := id8(k.ID)
	rest := *k
	rest.RequestsUsed, rest.LastUsedAt = 0, nil
	if err := putJSON(tx.Bucket(bKeys), id, &rest); err != nil {
		return err
	}
	return tx.Bucket(bKeyUsage).Put(id, appendKeyUsage(make([]byte, 0, keyUsageLong), k.RequestsUsed, k.LastUsedAt))
}

// migrateKeyUsage (schema 2 → 3) creates the key usage bucket and moves
// every key's counters out of its JSON into its record.
func migrateKeyUsage(tx *bbolt.Tx) error {
	if _, err := tx.CreateBucketIfNotExists(bKeyUsage); err != nil {
		return err
	}
	var keys []APIKey
	if err := tx.Bucket(bKeys).ForEach(func(_, v []byte) error {
		var k APIKey
		if err := json.Unmarshal(v, &k); err != nil {
			return err
		}
		keys = append(keys, k)
		return nil
	}); err != nil {
		return err
	}
	for i := range keys {
		if err := putKey(tx, &keys[i]); err != nil {
			return err
		}
	}
	return nil
}
