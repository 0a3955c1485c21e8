package storage

import (
	"encoding/binary"
	"fmt"
	"sync"

	"go.etcd.io/bbolt"
)

// The name dictionary (added by migrateRollups): stored usage records and rollups name
// their model and endpoint by a small id instead of repeating the string
// in every record. Names are never removed, so an id, once committed,
// means the same name for good and is cached in memory.
//
// Keys: 'n' + name → id (4 bytes, big-endian); 'i' + id → name. Id 0 is
// the empty name and has no entry.

var bNames = []byte("names")

type nameCache struct {
	mu     sync.RWMutex
	byName map[string]uint32
	byID   map[uint32]string
}

func (c *nameCache) lookupID(name string) (uint32, bool) {
	c.mu.RLock()
	id, ok := c.byName[name]
	c.mu.RUnlock()
	return id, ok
}

func (c *nameCache) lookupName(id uint32) (string, bool) {
	c.mu.RLock()
	n, ok := c.byID[id]
	c.mu.RUnlock()
	return n, ok
}

// add caches committed names.
func (c *nameCache) add(names map[string]uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.byName == nil {
		c.byName, c.byID = map[string]uint32{}, map[uint32]string{}
	}
	for n, id := range names {
		c.byName[n], c.byID[id] = id, n
	}
}

func nameKey(name string) []byte { return append([]byte{'n'}, name...) }

func nameIDKey(id uint32) []byte { return binary.BigEndian.AppendUint32([]byte{'i'}, id) }

// nameID returns the id of name in the write transaction of b, giving it
// a new one if it has none. Names new in this transaction go to fresh
// (and are looked up there), to be cached once it commits.
func (c *nameCache) nameID(b *bbolt.Bucket, name string, fresh map[string]uint32) (uint32, error) {
	if name == "" {
		return 0, nil
	}
	if id, ok := c.lookupID(name); ok {
		return id, nil
	}
	if id, ok := fresh[name]; ok {
		return id, nil
	}
	if v := b.Get(nameKey(name)); v != nil {
		if len(v) != 4 {
			return 0, errCorruptRecord
		}
		id := binary.BigEndian.Uint32(v)
		fresh[name] = id
		return id, nil
	}
	seq, err := b.NextSequence()
	if err != nil {
		return 0, err
	}
	if seq > 1<<32-1 {
		return 0, fmt.Errorf("storage: too many distinct model and endpoint names")
	}
	id := uint32(seq)
	if err := b.Put(nameKey(name), binary.BigEndian.AppendUint32(nil, id)); err != nil {
		return 0, err
	}
	if err := b.Put(nameIDKey(id), []byte(name)); err != nil {
		return 0, err
	}
	fresh[name] = id
	return id, nil
}

// nameResolver returns a function giving the name of an id, read in tx.
func (s *BoltStore) nameResolver(tx *bbolt.Tx) func(uint32) (string, error) {
	b := tx.Bucket(bNames)
	return func(id uint32) (string, error) {
		if id == 0 {
			return "", nil
		}
		if n, ok := s.names.lookupName(id); ok {
			return n, nil
		}
		v := b.Get(nameIDKey(id))
		if v == nil {
			return "", fmt.Errorf("storage: corrupt record: unknown name id %d", id)
		}
		n := string(v)
		s.names.add(map[string]uint32{n: id})
		return n, nil
	}
}
