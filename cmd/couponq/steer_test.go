package main

import (
	"strings"
	"testing"
)

// couponq retry and couponq cancel: every bad input is one line and exit
// status 2; a Redis-side success prints one summary line.
func TestRetryCancelCommands(t *testing.T) {
	t.Parallel()
	b := setup(t, 3)
	f := b.writeFile(t, "changes.jsonl", changeLines(b, 3, "stc"))
	if r := b.run(t, "", "enqueue", "--file", f, "--batch", "steer"); r.code != 0 {
		t.Fatalf("enqueue: exit %d: %s", r.code, r.stderr)
	}
	// The same writes again: duplicates only, so a batch finished at once.
	writes := b.writeFile(t, "writes.jsonl", changeLines(b, 2, "stc"))
	if r := b.run(t, "", "enqueue", "--file", writes, "--batch", "dups"); r.code != 0 {
		t.Fatalf("enqueue dups: exit %d: %s", r.code, r.stderr)
	}
	queued := "update:" + b.fake.BrandID() + ":stc0000"
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"retry without a target", []string{"retry"}, "give exactly one of --batch or --task"},
		{"retry with both", []string{"retry", "--batch", "steer", "--task", queued}, "give exactly one of --batch or --task"},
		{"retry --code with --task", []string{"retry", "--task", queued, "--code", "SIGN_ERROR"}, "--code goes with --batch"},
		{"retry unknown batch", []string{"retry", "--batch", "nope"}, "batch nope: not found"},
		{"retry unknown task", []string{"retry", "--task", "update:1:nope00"}, "task update:1:nope00: not found"},
		{"retry nothing failed", []string{"retry", "--batch", "steer"}, "batch steer has no failed or canceled tasks (0 succeeded, 0 failed, 0 canceled, 3 pending): nothing to retry"},
		{"retry a queued task", []string{"retry", "--task", queued}, "task " + queued + " is queued: only a failed or canceled task can be retried"},
		{"cancel without --batch", []string{"cancel"}, "--batch is required"},
		{"cancel unknown batch", []string{"cancel", "--batch", "nope"}, "batch nope: not found"},
		{"cancel finished batch", []string{"cancel", "--batch", "dups"}, "cancel dups: batch already finished: nothing to cancel"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := b.run(t, "", tt.args...)
			lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
			if r.code != 2 || len(lines) != 1 || !strings.Contains(lines[0], tt.want) || !strings.HasPrefix(lines[0], "couponq: ") || r.stdout != "" {
				t.Errorf("exit %d, stdout %q, stderr %q; want 2 and one line with %q", r.code, r.stdout, r.stderr, tt.want)
			}
		})
	}

	r := b.run(t, "", "cancel", "--batch", "steer")
	if want := "batch steer: 3 canceled, 0 in a call (they finish), 0 already done\n"; r.code != 0 || r.stdout != want {
		t.Errorf("cancel: exit %d, stdout %q, stderr %q; want %q", r.code, r.stdout, r.stderr, want)
	}
	if r := b.run(t, "", "cancel", "--batch", "steer"); r.code != 2 {
		t.Errorf("cancel again (finished now): exit %d: %s", r.code, r.stderr)
	}
	r = b.run(t, "", "retry", "--batch", "steer", "--code", "SIGN_ERROR")
	if r.code != 2 || !strings.Contains(r.stderr, "no failed or canceled tasks with error_code SIGN_ERROR") {
		t.Errorf("retry --code of another code: exit %d: %s", r.code, r.stderr)
	}
	r = b.run(t, "", "retry", "--batch", "steer", "--code", "CANCELED")
	if want := "batch steer: 3 queued again (0 failed, 3 canceled before)\n"; r.code != 0 || r.stdout != want {
		t.Errorf("retry: exit %d, stdout %q, stderr %q; want %q", r.code, r.stdout, r.stderr, want)
	}
	r = b.run(t, "", "status", "--batch", "steer", "--json")
	if r.code != 0 || !strings.Contains(r.stdout, `"pending": 3`) || !strings.Contains(r.stdout, `"canceled": 0`) {
		t.Errorf("status after retry: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	for _, cmd := range []string{"retry", "cancel"} {
		r := b.run(t, "", cmd, "--help")
		if r.code != 0 || !strings.Contains(r.stdout, "--batch") || !strings.Contains(r.stdout, "COUPONQ_REDIS_URL") || !strings.Contains(r.stdout, "exit status 2") {
			t.Errorf("%s --help: exit %d\n%s", cmd, r.code, r.stdout)
		}
	}
}
