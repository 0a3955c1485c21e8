package storage

import (
	"encoding/json"

	"go.etcd.io/bbolt"
)

// migrateEmptyScopes (schema 4 → 5) gives every key stored with an empty
// scope the full one. Before schema 5 an empty scope (null or {}) allowed
// everything; now it allows nothing (see Scopes), so these keys keep the
// meaning they were created with. A key whose scope lists permissions, even
// with empty lists, already meant what it says and is left alone. Only the
// scope_permissions field of the key's JSON is rewritten.
//
// Another backend upgrading a store written under the old rule must do the
// same once: store FullScopes for every key whose scope is null or {}.
func migrateEmptyScopes(tx *bbolt.Tx) error {
	keys := tx.Bucket(bKeys)
	full, err := json.Marshal(FullScopes())
	if err != nil {
		return err
	}
	updates := map[string][]byte{}
	if err := keys.ForEach(func(id, v []byte) error {
		var fields map[string]json.RawMessage
		if err := json.Unmarshal(v, &fields); err != nil {
			return err
		}
		var scopes Scopes
		if raw, ok := fields["scope_permissions"]; ok {
			if err := json.Unmarshal(raw, &scopes); err != nil {
				return err
			}
		}
		if len(scopes) > 0 {
			return nil
		}
		fields["scope_permissions"] = full
		out, err := json.Marshal(fields)
		if err != nil {
			return err
		}
		updates[string(id)] = out
		return nil
	}); err != nil {
		return err
	}
	for id, v := range updates {
		if err := keys.Put([]byte(id), v); err != nil {
			return err
		}
	}
	return nil
}
