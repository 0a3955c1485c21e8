package storage

import (
	"context"
	"encoding/binary"

	"go.etcd.io/bbolt"
)

// AccountIDs returns the id of every user with a credit account, deleted
// users included (their ledger is kept), in order: what a copy of the
// whole database walks.
func (s *BoltStore) AccountIDs(ctx context.Context) ([]int64, error) {
	if err := s.Flush(ctx); err != nil {
		return nil, err
	}
	var ids []int64
	err := s.view(func(tx *bbolt.Tx) error {
		return tx.Bucket(bAccounts).ForEach(func(k, _ []byte) error {
			if len(k) == 8 {
				ids = append(ids, int64(binary.BigEndian.Uint64(k)))
			}
			return nil
		})
	})
	return ids, err
}
