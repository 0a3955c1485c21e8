package storage

import (
	"encoding/json"
	"errors"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
)

func TestScopesAllows(t *testing.T) {
	for _, c := range []struct {
		name     string
		scope    Scopes
		perm     string
		resource string
		want     bool
	}{
		{"nil grants nothing", nil, PermWrite, ResourceChat, false},
		{"empty grants nothing", Scopes{}, PermWrite, ResourceChat, false},
		{"empty list grants nothing", Scopes{PermWrite: {}}, PermWrite, ResourceChat, false},
		{"other permission", Scopes{PermRead: {"*"}}, PermWrite, ResourceChat, false},
		{"named resource", Scopes{PermWrite: {ResourceChat}}, PermWrite, ResourceChat, true},
		{"other resource", Scopes{PermWrite: {ResourceAPIKeys}}, PermWrite, ResourceChat, false},
		{"wildcard", Scopes{PermWrite: {"*"}}, PermWrite, ResourceChat, true},
		{"wildcard asked of a name", Scopes{PermWrite: {ResourceChat}}, PermWrite, "*", false},
		{"wildcard asked of a wildcard", Scopes{PermWrite: {"*"}}, PermWrite, "*", true},
		{"full", FullScopes(), PermAdmin, ResourceProfile, true},
		{"stored case is not folded", Scopes{PermWrite: {"CHAT"}}, PermWrite, ResourceChat, false},
		{"stored glob is literal", Scopes{PermWrite: {"c*"}}, PermWrite, ResourceChat, false},
	} {
		if got := c.scope.Allows(c.perm, c.resource); got != c.want {
			t.Errorf("%s: %v.Allows(%s, %s) = %v, want %v", c.name, c.scope, c.perm, c.resource, got, c.want)
		}
	}
}

func TestScopesCovers(t *testing.T) {
	for _, c := range []struct {
		name          string
		caller, other Scopes
		want          bool
	}{
		{"empty covers empty", Scopes{}, Scopes{}, true},
		{"nil covers empty", nil, Scopes{PermRead: {}}, true},
		{"empty covers nothing more", Scopes{}, Scopes{PermRead: {ResourceUsage}}, false},
		{"narrow does not cover full", Scopes{PermWrite: {ResourceAPIKeys}}, FullScopes(), false},
		{"narrow does not cover a wildcard", Scopes{PermWrite: {ResourceAPIKeys}}, Scopes{PermWrite: {"*"}}, false},
		{"narrow covers itself", Scopes{PermWrite: {ResourceAPIKeys}}, Scopes{PermWrite: {ResourceAPIKeys}}, true},
		{"narrow covers empty", Scopes{PermWrite: {ResourceAPIKeys}}, Scopes{}, true},
		{"full covers anything", FullScopes(), Scopes{PermAdmin: {"*"}, PermRead: {ResourceChat}}, true},
		{"wildcard covers names", Scopes{PermRead: {"*"}}, Scopes{PermRead: {ResourceUsage, ResourceProfile}}, true},
		{"one missing name", Scopes{PermRead: {ResourceUsage}}, Scopes{PermRead: {ResourceUsage, ResourceProfile}}, false},
		{"other permission", Scopes{PermRead: {"*"}}, Scopes{PermWrite: {ResourceChat}}, false},
		{"legacy literal needs the literal", Scopes{PermRead: {ResourceUsage}}, Scopes{PermRead: {"USAGE"}}, false},
	} {
		if got := c.caller.Covers(c.other); got != c.want {
			t.Errorf("%s: %v.Covers(%v) = %v, want %v", c.name, c.caller, c.other, got, c.want)
		}
	}
}

func TestParseScopes(t *testing.T) {
	for _, c := range []struct {
		name string
		in   map[string][]string
		want Scopes // nil: refused
	}{
		{"empty", map[string][]string{}, Scopes{}},
		{"empty lists are left out", map[string][]string{"read": {}, "write": nil}, Scopes{}},
		{"case and space", map[string][]string{" READ ": {" API_Keys "}}, Scopes{PermRead: {ResourceAPIKeys}}},
		{"permissions merge after folding", map[string][]string{"read": {"usage"}, "Read": {"profile"}},
			Scopes{PermRead: {ResourceProfile, ResourceUsage}}},
		{"sorted and deduplicated", map[string][]string{"read": {"usage", "profile", "usage"}},
			Scopes{PermRead: {ResourceProfile, ResourceUsage}}},
		{"wildcard absorbs names", map[string][]string{"write": {"chat", "*"}}, Scopes{PermWrite: {"*"}}},
		{"stars alone are the wildcard", map[string][]string{"write": {"**"}}, Scopes{PermWrite: {"*"}}},
		{"glob expands to names", map[string][]string{"write": {"api_*"}}, Scopes{PermWrite: {ResourceAPIKeys}}},
		{"suffix glob", map[string][]string{"write": {"*_KEYS"}}, Scopes{PermWrite: {ResourceAPIKeys}}},
		{"glob over several", map[string][]string{"read": {"*s"}},
			Scopes{PermRead: {ResourceAPIKeys, ResourceModels, ResourceWebhooks}}},
		{"aliases", map[string][]string{"write": {"completions", "profile_update"}},
			Scopes{PermWrite: {ResourceChat, ResourceProfile}}},
		{"reference registration scope", map[string][]string{
			"read": {"models", "usage", "profile"}, "write": {"chat", "completions", "profile_update"}},
			Scopes{PermRead: {ResourceModels, ResourceProfile, ResourceUsage}, PermWrite: {ResourceChat, ResourceProfile}}},
		{"unknown permission", map[string][]string{"root": {"*"}}, nil},
		{"permission wildcard", map[string][]string{"*": {"*"}}, nil},
		{"unknown resource", map[string][]string{"read": {"api_key"}}, nil},
		{"empty resource", map[string][]string{"read": {" "}}, nil},
		{"long resource", map[string][]string{"read": {string(make([]byte, 65))}}, nil},
		{"glob matching nothing", map[string][]string{"read": {"x*"}}, nil},
		{"malformed glob", map[string][]string{"read": {"[a-"}}, nil},
	} {
		got, err := ParseScopes(c.in)
		if c.want == nil {
			var se *ScopeError
			if !errors.As(err, &se) {
				t.Errorf("%s: ParseScopes(%v) = %v, %v; want a ScopeError", c.name, c.in, got, err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: ParseScopes(%v) = %v, %v; want %v", c.name, c.in, got, err, c.want)
		}
	}
}

// randomScopeInput draws a scope as a client might send it: any case,
// spaces, wildcards, globs, aliases and names of every kind.
func randomScopeInput(rng *rand.Rand) map[string][]string {
	perms := []string{"read", "write", "admin", "READ", " Write"}
	resources := []string{"*", "**", "api_keys", "API_KEYS", "chat", "models", "profile", "usage",
		"completions", "profile_update", "api_*", "*s", "c*", "p*", "*_keys", "u?age"}
	in := map[string][]string{}
	for range rng.IntN(4) {
		p := perms[rng.IntN(len(perms))]
		for range rng.IntN(4) {
			in[p] = append(in[p], resources[rng.IntN(len(resources))])
		}
	}
	return in
}

// Property: parsing is idempotent, its output uses only known names, and
// Covers agrees with Allows over every permission and resource: a caller
// covers a scope exactly when it allows each of its grants.
func TestParseScopesProperties(t *testing.T) {
	rng := rand.New(rand.NewPCG(14, 14))
	for range 2000 {
		a, err := ParseScopes(randomScopeInput(rng))
		if err != nil {
			t.Fatal(err)
		}
		again, err := ParseScopes(a)
		if err != nil || !reflect.DeepEqual(again, a) {
			t.Fatalf("not idempotent: %v -> %v, %v", a, again, err)
		}
		b, _ := ParseScopes(randomScopeInput(rng))
		covers := true
		for _, perm := range ScopePermissions {
			for _, r := range append([]string{"*"}, ScopeResources...) {
				if b.Allows(perm, r) && !a.Allows(perm, r) {
					covers = false
				}
			}
		}
		if a.Covers(b) != covers {
			t.Fatalf("%v.Covers(%v) = %v, but grant by grant %v", a, b, a.Covers(b), covers)
		}
		if a.Covers(b) && b.Covers(a) && !reflect.DeepEqual(a, b) {
			t.Fatalf("equal grants, different canonical forms: %v, %v", a, b)
		}
	}
}

// FuzzParseScopes: any scope a client can send either is refused with a
// ScopeError or parses to a canonical scope of known names, which parses
// to itself again.
func FuzzParseScopes(f *testing.F) {
	for _, seed := range []string{
		`{}`, `{"read":[]}`, `{"read":["*"],"write":["*"],"admin":["*"]}`, `{"WRITE":[" API_*"]}`,
		`{"read":["models","usage","profile"],"write":["chat","completions","profile_update"]}`,
		`{"read":["[a-"]}`, `{"root":["*"]}`, `{"read":["**","chat"]}`, `{"read":["u?age","*s"]}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var in map[string][]string
		if json.Unmarshal(b, &in) != nil {
			return
		}
		got, err := ParseScopes(in)
		if err != nil {
			var se *ScopeError
			if !errors.As(err, &se) {
				t.Fatalf("ParseScopes(%s): %T %v", b, err, err)
			}
			return
		}
		for perm, resources := range got {
			if !slices.Contains(ScopePermissions, perm) || len(resources) == 0 {
				t.Fatalf("ParseScopes(%s) = %v: permission %q", b, got, perm)
			}
			for _, r := range resources {
				if r != "*" && !slices.Contains(ScopeResources, r) {
					t.Fatalf("ParseScopes(%s) = %v: resource %q", b, got, r)
				}
			}
		}
		if again, err := ParseScopes(got); err != nil || !reflect.DeepEqual(again, got) {
			t.Fatalf("ParseScopes(%s) = %v, parsed again %v, %v", b, got, again, err)
		}
	})
}
