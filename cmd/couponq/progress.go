package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/term"
)

// progress shows advancement on stderr: on a terminal one line redrawn in
// place (carriage return, then erase to the end of the line) and never
// wider than the terminal, so a redraw never wraps into a new line; a
// plain line at most every interval otherwise (logs stay readable in CI
// and pipes).
type progress struct {
	w        io.Writer
	tty      bool
	width    func() int // the terminal's columns
	label    string
	total    int64
	every    time.Duration
	last     time.Time
	lastDone int64
	drawn    bool // a bar line is on screen, without its newline
	lastDraw time.Time
}

// redrawEvery throttles terminal redraws.
const redrawEvery = 100 * time.Millisecond

func newProgress(w io.Writer, label string, total int64) *progress {
	p := &progress{w: w, label: label, total: total, every: 2 * time.Second, tty: isTerminal(w)}
	p.width = func() int { return terminalWidth(w) }
	return p
}

// terminalWidth is w's columns, 80 when unknown.
func terminalWidth(w io.Writer) int {
	if f, ok := w.(*os.File); ok {
		if cols, _, err := term.GetSize(int(f.Fd())); err == nil && cols > 0 {
			return cols
		}
	}
	return 80
}

// set reports done of total, with an optional suffix (e.g. failures).
func (p *progress) set(done int64, suffix string) {
	now := time.Now()
	if p.tty {
		if done != p.total && now.Sub(p.lastDraw) < redrawEvery && p.drawn {
			return
		}
		p.lastDraw = now
		fmt.Fprint(p.w, "\r"+barLine(p.width(), p.label, done, p.total, suffix)+"\x1b[K")
		p.drawn = true
		return
	}
	if done != p.total && now.Sub(p.last) < p.every {
		return
	}
	if done == p.lastDone && !p.last.IsZero() {
		return
	}
	p.last, p.lastDone = now, done
	line := fmt.Sprintf("%s %d/%d", p.label, done, p.total)
	if suffix != "" {
		line += " " + suffix
	}
	fmt.Fprintln(p.w, line)
}

// note prints a line of its own: on a terminal in place of the bar, which
// is drawn again below it on the next set.
func (p *progress) note(line string) {
	if p.drawn {
		fmt.Fprint(p.w, "\r\x1b[K")
		p.drawn = false
	}
	fmt.Fprintln(p.w, line)
}

// finish clears the bar line; what follows starts on a clean line.
func (p *progress) finish() {
	if p.drawn {
		fmt.Fprint(p.w, "\r\x1b[K")
		p.drawn = false
	}
}

// Bar widths: below minBar columns a bar says nothing and is left out.
const (
	minBar = 10
	maxBar = 40
)

// barLine renders "label [=====>    ]  42% 420/1000 suffix" in at most
// width-1 columns (a line filling the last column wraps on some
// terminals). Label and counts come first; the bar takes at least minBar
// columns when they leave that much, and up to maxBar; the suffix gets
// what is left, cut with "…".
func barLine(width int, label string, done, total int64, suffix string) string {
	width = max(width-1, 1)
	pct := int64(100)
	if total > 0 {
		pct = min(100, max(0, done*100/total))
	}
	counts := fmt.Sprintf("%3d%% %d/%d", pct, done, total)
	join := func(parts ...string) string {
		var keep []string
		for _, s := range parts {
			if s != "" {
				keep = append(keep, s)
			}
		}
		return strings.Join(keep, " ")
	}
	fit := func(used int) string { // the suffix in what is left after used columns
		if left := width - used - 1; left >= 4 {
			return cut(suffix, left)
		}
		return ""
	}
	base := join(label, counts)
	room := width - utf8.RuneCountInString(base) - 3 // "[", "]" and a space
	if room < minBar {
		if utf8.RuneCountInString(base) > width {
			return cut(base, width)
		}
		return join(base, fit(utf8.RuneCountInString(base)))
	}
	sfx := fit(utf8.RuneCountInString(base) + 3 + minBar)
	n := room
	if sfx != "" {
		n -= utf8.RuneCountInString(sfx) + 1
	}
	n = min(n, maxBar)
	fill := int(int64(n) * pct / 100)
	bar := strings.Repeat("=", fill)
	if fill < n {
		bar += ">" + strings.Repeat(" ", n-fill-1)
	}
	return join(label, "["+bar+"]", counts, sfx)
}

// cut shortens s to at most n runes, ending in "…" when cut.
func cut(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:max(n-1, 0)]) + "…"
}
