package admin

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// randomScope draws a scope_permissions value as a client might send it:
// any case, wildcards, globs, aliases, empty lists and {}.
func randomScope(rng *rand.Rand) map[string][]string {
	perms := []string{"read", "write", "admin", "WRITE"}
	resources := []string{"*", "api_keys", "chat", "models", "profile", "usage", "completions", "profile_update",
		"api_*", "*s", "p*", "CHAT"}
	in := map[string][]string{}
	for range rng.IntN(4) {
		p := perms[rng.IntN(len(perms))]
		if _, ok := in[p]; !ok {
			in[p] = []string{}
		}
		for range rng.IntN(3) {
			in[p] = append(in[p], resources[rng.IntN(len(resources))])
		}
	}
	return in
}

// keyScopes lists the scope of every key of the user, by key id, as the
// admin view shows them.
func keyScopes(t *testing.T, h *Handler, userID int64) map[int64]storage.Scopes {
	t.Helper()
	code, body, _ := call(t, h, "GET", fmt.Sprintf("/admin/users/%d", userID), testAdminKey, nil)
	mustStatus(t, "user's keys", code, 200, body)
	out := map[int64]storage.Scopes{}
	for _, k := range body["keys"].([]any) {
		m := k.(map[string]any)
		s := storage.Scopes{}
		for perm, list := range m["scope_permissions"].(map[string]any) {
			for _, r := range list.([]any) {
				s[perm] = append(s[perm], r.(string))
			}
		}
		out[int64(m["id"].(float64))] = s
	}
	return out
}

// Property: a caller holding only a narrow key, creating, updating,
// rotating and bulk-rotating keys at random (with every key it obtains on
// the way, against any key of the account), never holds a key wider than
// the one it started with, never gives a key more than its own scope, and
// never obtains the primary key's secret or narrows it.
func TestScopeNeverWidens(t *testing.T) {
	h, _ := newTestHandler(t, testAdminKey)
	rng := rand.New(rand.NewPCG(14, 2026))
	succeeded := map[int]int{} // by kind of step: the walk must not be all refusals
	for round := range 12 {
		primary, uid := registerUser(t, h, fmt.Sprintf("widen%d@example.com", round))
		primaryID := int64(0)
		for id := range keyScopes(t, h, uid) {
			primaryID = id
		}
		// The owner's other keys, targets the caller may try to take over.
		for i := range 3 {
			call(t, h, "POST", "/user/api-keys", primary, map[string]any{"key_name": fmt.Sprintf("owner%d", i), "scope_permissions": randomScope(rng)})
		}
		code, body, _ := call(t, h, "POST", "/user/api-keys", primary, map[string]any{"key_name": "start", "scope_permissions": randomScope(rng)})
		mustStatus(t, "starting key", code, 200, body)
		startID := int64(body["key_id"].(float64))
		start := keyScopes(t, h, uid)[startID]
		held := map[int64]string{startID: body["api_key"].(string)}

		for step := range 40 {
			ids := make([]int64, 0, len(held))
			for id := range held {
				ids = append(ids, id)
			}
			callerID := ids[rng.IntN(len(ids))]
			caller := held[callerID]
			before := keyScopes(t, h, uid)
			all := make([]int64, 0, len(before))
			for id := range before {
				all = append(all, id)
			}
			target := all[rng.IntN(len(all))]
			path := fmt.Sprintf("/user/api-keys/%d", target)
			var code int
			var body map[string]any
			kind := rng.IntN(5)
			switch kind {
			case 0:
				req := map[string]any{"key_name": fmt.Sprintf("c%d-%d", round, step)}
				if rng.IntN(3) > 0 {
					req["scope_permissions"] = randomScope(rng)
				}
				code, body, _ = call(t, h, "POST", "/user/api-keys", caller, req)
				if code == 200 {
					id := int64(body["key_id"].(float64))
					held[id] = body["api_key"].(string)
					if got := keyScopes(t, h, uid)[id]; !before[callerID].Covers(got) {
						t.Fatalf("round %d step %d: key %d created with %v by a key with %v", round, step, id, got, before[callerID])
					}
				}
			case 1, 2:
				code, body, _ = call(t, h, "PUT", path, caller, map[string]any{"scope_permissions": randomScope(rng)})
				if code == 200 {
					if got := keyScopes(t, h, uid)[target]; !before[callerID].Covers(got) {
						t.Fatalf("round %d step %d: key %d updated to %v by a key with %v", round, step, target, got, before[callerID])
					}
				}
			case 3:
				code, body, _ = call(t, h, "PUT", path, caller, map[string]any{"action": "rotate"})
				if code == 200 {
					held[target] = body["api_key"].(string)
				}
			case 4:
				code, body, _ = call(t, h, "PUT", path, caller, map[string]any{"action": "bulk_rotate"})
				if code == 200 {
					for _, k := range body["new_keys"].([]any) {
						m := k.(map[string]any)
						held[int64(m["key_id"].(float64))] = m["new_api_key"].(string)
					}
				}
			}
			if code == 200 {
				succeeded[kind]++
			}
			if code >= 500 {
				t.Fatalf("round %d step %d: status %d %v", round, step, code, body)
			}
			after := keyScopes(t, h, uid)
			if !after[primaryID].IsFull() {
				t.Fatalf("round %d step %d: the primary key's scope became %v", round, step, after[primaryID])
			}
			if _, ok := held[primaryID]; ok {
				t.Fatalf("round %d step %d: the caller obtained the primary key's secret", round, step)
			}
			for id := range held {
				if s, ok := after[id]; ok && !start.Covers(s) {
					t.Fatalf("round %d step %d: the caller holds key %d with %v, wider than its starting %v", round, step, id, s, start)
				}
			}
		}
	}
	for kind := range 5 {
		if succeeded[kind] == 0 {
			t.Errorf("no step of kind %d succeeded: the walk tested refusals only", kind)
		}
	}
}
