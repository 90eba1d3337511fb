package main

import (
	"fmt"
	"io"
	"time"

	"github.com/schollz/progressbar/v3"
)

// progress shows advancement on stderr: a bar on a terminal, a plain line
// at most every interval otherwise (logs stay readable in CI and pipes).
type progress struct {
	w        io.Writer
	bar      *progressbar.ProgressBar
	label    string
	total    int64
	every    time.Duration
	last     time.Time
	lastDone int64
}

func newProgress(w io.Writer, label string, total int64) *progress {
	p := &progress{w: w, label: label, total: total, every: 2 * time.Second}
	if isTerminal(w) {
		p.bar = progressbar.NewOptions64(total,
			progressbar.OptionSetWriter(w),
			progressbar.OptionSetDescription(label),
			progressbar.OptionShowCount(),
			progressbar.OptionShowIts(),
			progressbar.OptionSetItsString("tasks"),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionSetWidth(30),
			progressbar.OptionClearOnFinish(),
		)
	}
	return p
}

// set reports done of total, with an optional suffix (e.g. failures).
func (p *progress) set(done int64, suffix string) {
	if p.bar != nil {
		if suffix != "" {
			p.bar.Describe(p.label + " " + suffix)
		}
		_ = p.bar.Set64(done)
		return
	}
	now := time.Now()
	if done != p.total && now.Sub(p.last) < p.every {
		return
	}
	if done == p.lastDone && !p.last.IsZero() {
		return
	}
	p.last, p.lastDone = now, done
	fmt.Fprintf(p.w, "%s %d/%d %s\n", p.label, done, p.total, suffix)
}

// note prints a line of its own: on a terminal above the bar, which is
// cleared and drawn again on the next set.
func (p *progress) note(line string) {
	if p.bar != nil {
		_ = p.bar.Clear()
	}
	fmt.Fprintln(p.w, line)
}

// finish ends the bar line.
func (p *progress) finish() {
	if p.bar != nil {
		_ = p.bar.Finish()
	}
}
