package tasks

import (
	"fmt"

	"github.com/oklog/ulid/v2"
)

// maxBatchIDLen is the longest batch ID accepted.
const maxBatchIDLen = 128

func newULID() string { return ulid.Make().String() }

// newBatchID returns a new batch ID: a ULID, so batch IDs sort by creation
// time.
func newBatchID() string { return newULID() }

// ValidateBatchID checks a batch ID: 1–128 characters of [0-9A-Za-z_.-].
// (":" is refused so that no batch key can spell another batch's task set;
// "{" and "}" so that couponq's own keys in a batch's hash slot, whose
// hash tag is the batch key's name, stay in that slot on Redis Cluster.)
func ValidateBatchID(id string) error {
	if id == "" {
		return fmt.Errorf("couponq: invalid batch ID: empty")
	}
	if len(id) > maxBatchIDLen {
		return fmt.Errorf("couponq: invalid batch ID: %d characters, at most %d", len(id), maxBatchIDLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c == '-' || c == '.') {
			return fmt.Errorf("couponq: invalid batch ID %q: character %q at position %d (use [0-9A-Za-z_.-])", id, c, i+1)
		}
	}
	return nil
}
