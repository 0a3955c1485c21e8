package storage

import (
	"fmt"
	"path"
	"slices"
	"strings"
)

// Scopes maps a permission ("read", "write", "admin") to the resources it
// covers; "*" covers every resource, those added later included.
//
// Allows alone decides what a scope grants, and it grants only what is
// listed: a permission with no entry or an empty list grants nothing, so
// {} is the narrowest scope, never the widest. Every Store must hand back
// the scope it was given; a backend must never store an empty scope for a
// key meant to have the full one (a key created without an explicit scope
// is stored with FullScopes or its creator's scope, see admin's createKey).
type Scopes map[string][]string

// Permissions and resources of a scope. ScopeResources are the only
// resource names a request may use; the gateway and the management API
// check exactly these.
const (
	PermRead  = "read"
	PermWrite = "write"
	PermAdmin = "admin"

	ResourceAPIKeys = "api_keys" // read: list keys and their audit log; write: create, update, rotate, delete
	ResourceChat    = "chat"     // write: the gateway's inference endpoints
	ResourceModels  = "models"   // read: accepted for the reference's scopes; model listing is open to any key
	ResourceProfile = "profile"  // read: the account profile; write: change it
	ResourceUsage   = "usage"    // read: balance, plan, usage and monitoring views
	// ResourceWebhooks: read lists the user's webhooks and their
	// deliveries; write creates, deletes and tests them. A webhook carries
	// the user's balance and key events out, so it needs its own grant.
	ResourceWebhooks = "webhooks"
	anyResource      = "*"
)

// ScopePermissions and ScopeResources list the names a scope may use, in
// the order error messages give them.
var (
	ScopePermissions = []string{PermRead, PermWrite, PermAdmin}
	ScopeResources   = []string{ResourceAPIKeys, ResourceChat, ResourceModels, ResourceProfile, ResourceUsage, ResourceWebhooks}
)

// scopeAliases are the reference's resource names for the same thing.
var scopeAliases = map[string]string{
	"completions":    ResourceChat,
	"profile_update": ResourceProfile,
}

// maxScopeResourceLen bounds one resource name as sent.
const maxScopeResourceLen = 64

// FullScopes is the scope of a primary key: everything.
func FullScopes() Scopes {
	return Scopes{PermRead: {anyResource}, PermWrite: {anyResource}, PermAdmin: {anyResource}}
}

// Allows reports whether the scope grants perm on resource: only when the
// permission's list names the resource or "*". Asking for resource "*"
// is asking for every resource, which only "*" grants.
func (s Scopes) Allows(perm, resource string) bool {
	for _, r := range s[perm] {
		if r == anyResource || r == resource {
			return true
		}
	}
	return false
}

// Covers reports whether s grants everything other grants, so that a key
// cannot hand out, or obtain by rotation, more than its own scope. It
// decides through Allows, entry by entry.
func (s Scopes) Covers(other Scopes) bool {
	for perm, resources := range other {
		for _, r := range resources {
			if !s.Allows(perm, r) {
				return false
			}
		}
	}
	return true
}

// IsFull reports whether the scope grants every permission on every
// resource.
func (s Scopes) IsFull() bool { return s.Covers(FullScopes()) }

// Clone returns a deep copy (nil stays nil).
func (s Scopes) Clone() Scopes {
	if s == nil {
		return nil
	}
	out := make(Scopes, len(s))
	for perm, resources := range s {
		out[perm] = slices.Clone(resources)
	}
	return out
}

// ScopeError is a scope a client sent that cannot be stored; Error names
// the JSON field (scope_permissions.<permission>) and never echoes more
// than a short piece of the input.
type ScopeError struct{ msg string }

func (e *ScopeError) Error() string { return e.msg }

func scopeErrorf(format string, args ...any) error {
	return &ScopeError{msg: fmt.Sprintf(format, args...)}
}

// ParseScopes turns a scope as a client sent it into its canonical form,
// the only form stored: permission and resource names trimmed and
// lower-cased; the reference's aliases ("completions", "profile_update")
// replaced by their resource; a glob ("api_*", "*_keys") replaced by the
// resources it matches, and any run of "*" alone by "*"; a list holding
// "*" reduced to it; the rest sorted without duplicates; permissions with
// no resources left out. Unknown permissions or resources, and globs that
// match nothing, are refused, so that a typo never yields a key that
// silently can do less (or, with a glob, more) than meant.
func ParseScopes(in map[string][]string) (Scopes, error) {
	out := Scopes{}
	for rawPerm, resources := range in {
		perm := strings.ToLower(strings.TrimSpace(rawPerm))
		if !slices.Contains(ScopePermissions, perm) {
			return nil, scopeErrorf("scope_permissions: unknown permission %q (use %s)",
				clipScopeName(rawPerm), strings.Join(ScopePermissions, ", "))
		}
		for _, raw := range resources {
			names, err := parseScopeResource(perm, raw)
			if err != nil {
				return nil, err
			}
			out[perm] = append(out[perm], names...)
		}
	}
	for perm, resources := range out {
		if slices.Contains(resources, anyResource) {
			out[perm] = []string{anyResource}
			continue
		}
		slices.Sort(resources)
		out[perm] = slices.Compact(resources)
	}
	return out, nil
}

// parseScopeResource returns the canonical resources one entry names.
func parseScopeResource(perm, raw string) ([]string, error) {
	r := strings.ToLower(strings.TrimSpace(raw))
	if r == "" || len(r) > maxScopeResourceLen {
		return nil, scopeErrorf("scope_permissions.%s: empty or too long resource name", perm)
	}
	if strings.Trim(r, "*") == "" {
		return []string{anyResource}, nil
	}
	if alias, ok := scopeAliases[r]; ok {
		return []string{alias}, nil
	}
	if slices.Contains(ScopeResources, r) {
		return []string{r}, nil
	}
	if !strings.ContainsAny(r, "*?[") {
		return nil, scopeErrorf("scope_permissions.%s: unknown resource %q (use %s or *)",
			perm, clipScopeName(raw), strings.Join(ScopeResources, ", "))
	}
	var names []string
	for _, name := range ScopeResources {
		ok, err := path.Match(r, name)
		if err != nil {
			return nil, scopeErrorf("scope_permissions.%s: malformed pattern %q", perm, clipScopeName(raw))
		}
		if ok {
			names = append(names, name)
		}
	}
	if len(names) == 0 {
		return nil, scopeErrorf("scope_permissions.%s: pattern %q matches no resource (use %s or *)",
			perm, clipScopeName(raw), strings.Join(ScopeResources, ", "))
	}
	return names, nil
}

// clipScopeName bounds a name echoed in an error.
func clipScopeName(s string) string {
	if len(s) > 32 {
		return s[:32] + "…"
	}
	return s
}
