package postgres

import (
	"fmt"
	"strings"
)

// conditions builds the WHERE clause of a query with numbered arguments.
type conditions struct {
	where []string
	args  []any
}

// add adds cond (with one %d for its argument's number) for v.
func (c *conditions) add(cond string, v any) {
	c.args = append(c.args, v)
	c.where = append(c.where, fmt.Sprintf(cond, len(c.args)))
}

// ids adds the user and key conditions of a filter (zero: none).
func (c *conditions) ids(userID, keyID int64) {
	if userID != 0 {
		c.add("user_id = $%d", userID)
	}
	if keyID != 0 {
		c.add("key_id = $%d", keyID)
	}
}

// sql is the clause, empty without conditions.
func (c *conditions) sql() string {
	if len(c.where) == 0 {
		return ""
	}
	return ` WHERE ` + strings.Join(c.where, " AND ")
}
