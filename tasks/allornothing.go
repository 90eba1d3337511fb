package tasks

import (
	"errors"
	"fmt"
	"iter"
	"strings"
)

// ErrInvalidBatch: EnqueueBatch with BatchOptions.AllOrNothing found an
// invalid change and enqueued nothing. The error is an *InvalidBatchError.
var ErrInvalidBatch = errors.New("invalid changes: nothing was enqueued")

// InvalidBatchError lists every invalid change of an all-or-nothing batch,
// each a *ChangeError (with its 0-based index; a *LineError of a
// ChangeReader's input keeps its line number).
type InvalidBatchError struct {
	Changes []*ChangeError
}

// Error reads "couponq: nothing was enqueued: 2 invalid change(s): line 1:
// …; change #3: …" (the first ten).
func (e *InvalidBatchError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "couponq: nothing was enqueued: %d invalid change(s): ", len(e.Changes))
	for i, ce := range e.Changes {
		if i == 10 {
			fmt.Fprintf(&b, "; … and %d more", len(e.Changes)-i)
			break
		}
		if i > 0 {
			b.WriteString("; ")
		}
		msg := ce.Error()
		var le *LineError
		if errors.As(ce.Err, &le) {
			msg = le.Error() // its line number says more than its position
		}
		b.WriteString(strings.ReplaceAll(msg, "\n", "; "))
	}
	return b.String()
}

// Is makes errors.Is(err, ErrInvalidBatch) true.
func (e *InvalidBatchError) Is(target error) bool { return target == ErrInvalidBatch }

// validateAll reads every change of the input, as the CLI's first pass
// over a file does: every invalid change, and every task ID given two
// different payloads, is reported. It returns the changes when all are
// valid. An error of the input other than a bad line stops it.
func validateAll(changes iter.Seq2[Change, error]) ([]Change, error) {
	var (
		all []Change
		bad []*ChangeError
		ids = map[string]struct {
			index int
			sum   string
		}{}
	)
	index := -1
	for c, err := range changes {
		index++
		var le *LineError
		switch {
		case errors.As(err, &le):
			bad = append(bad, &ChangeError{Index: index, Err: err})
			continue
		case err != nil:
			return nil, fmt.Errorf("couponq: reading change #%d: %w", index+1, err)
		}
		if verr := c.Validate(); verr != nil {
			bad = append(bad, &ChangeError{Index: index, TaskID: c.TaskID(), Err: verr})
			continue
		}
		if id := c.TaskID(); id != "" {
			payload, perr := c.Payload()
			if perr != nil {
				bad = append(bad, &ChangeError{Index: index, TaskID: id, Err: perr})
				continue
			}
			sum := PayloadSHA256(payload)
			if prev, ok := ids[id]; ok && prev.sum != sum {
				bad = append(bad, &ChangeError{Index: index, TaskID: id, Err: fmt.Errorf(
					"already given another payload by change #%d (an out_request_no never carries two bodies)", prev.index+1)})
				continue
			} else if !ok {
				ids[id] = struct {
					index int
					sum   string
				}{index, sum}
			}
		}
		all = append(all, c)
	}
	if len(bad) > 0 {
		return nil, &InvalidBatchError{Changes: bad}
	}
	return all, nil
}
