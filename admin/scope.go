package admin

import (
	"net/http"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// need is what a user route asks of the calling key's scope: a permission
// on a resource, or the full scope. The route table gives every user route
// one; a user route without one refuses every key (fail closed).
type need struct {
	perm, resource string
	full           bool
	verb           string // for the refusal: "Insufficient permissions to <verb>"
}

// noScope is the need of public and admin routes, which no key reaches.
var noScope = need{}

// needFullScope is for what acts on every key at once (deleting the
// account): only a key with the full scope may do it.
var needFullScope = need{full: true, verb: "delete the account"}

func needRead(resource, verb string) need {
	return need{perm: storage.PermRead, resource: resource, verb: verb}
}

func needWrite(resource, verb string) need {
	return need{perm: storage.PermWrite, resource: resource, verb: verb}
}

// grantedBy reports whether scopes grant the need; storage.Scopes.Allows
// decides.
func (n need) grantedBy(scopes storage.Scopes) bool {
	switch {
	case n.full:
		return scopes.IsFull()
	case n.perm == "":
		return false
	}
	return scopes.Allows(n.perm, n.resource)
}

// String is the need as the OpenAPI document's x-required-scope gives it:
// "read:usage", "full", or "" for none.
func (n need) String() string {
	switch {
	case n.full:
		return "full"
	case n.perm == "":
		return ""
	}
	return n.perm + ":" + n.resource
}

// refusal is the 403 for a key whose scope lacks the need.
func (n need) refusal() *apiError {
	if n.full {
		return newError(http.StatusForbidden, "insufficient_permissions",
			"Insufficient permissions: deleting the account needs a key with full scope")
	}
	if n.perm == "" {
		return newError(http.StatusForbidden, "insufficient_permissions", "Insufficient permissions")
	}
	return newError(http.StatusForbidden, "insufficient_permissions",
		"Insufficient permissions to %s (needs %s permission on %s)", n.verb, n.perm, n.resource)
}

// grantableScopes is the scope a key created or updated with requested
// (nil: not given) may have when the caller has caller: requested in its
// canonical form (see storage.ParseScopes; malformed: 422), which the
// caller's scope must cover (403 otherwise); not given, the caller's own
// scope.
func grantableScopes(requested *scopeInput, caller storage.Scopes) (storage.Scopes, error) {
	if requested == nil {
		return caller.Clone(), nil
	}
	scopes, err := validateScopes(*requested)
	if err != nil {
		return nil, err
	}
	if !caller.Covers(scopes) {
		return nil, errForbidden("Cannot grant a key more scope than the calling key has")
	}
	return scopes, nil
}
