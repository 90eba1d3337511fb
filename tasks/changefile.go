package tasks

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"iter"
	"path/filepath"
	"strings"
	"unicode/utf8"

	"github.com/couponq/couponq/wechatpay"
)

// Format is the format of a change file.
type Format string

// Change file formats.
const (
	FormatJSONL Format = "jsonl" // JSON Lines: one change object a line
	FormatCSV   Format = "csv"   // CSV with a header row; display_info as one JSON column
)

// FormatOf tells a change file's format from its extension: .jsonl and
// .ndjson are JSON Lines, .csv is CSV (case-insensitive).
func FormatOf(path string) (Format, error) {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".jsonl", ".ndjson":
		return FormatJSONL, nil
	case ".csv":
		return FormatCSV, nil
	}
	return "", fmt.Errorf("couponq: %s: unknown change file format (want .jsonl, .ndjson or .csv)", path)
}

// maxLineBytes is the longest line (a JSONL line, or a CSV record) a change
// file may have.
const maxLineBytes = 1 << 20

// errLineTooLong is the error of a line longer than maxLineBytes.
var errLineTooLong = fmt.Errorf("line longer than %d bytes", maxLineBytes)

// LineError is one bad line of a change file. Reading goes on after it.
type LineError struct {
	Line int // 1-based; for CSV the line the record starts on
	Err  error
}

func (e *LineError) Error() string { return fmt.Sprintf("line %d: %v", e.Line, e.Err) }

// Unwrap returns the reason, e.g. a *wechatpay.ValidationError.
func (e *LineError) Unwrap() error { return e.Err }

// csvColumns are the columns a CSV change file may have, in the order of
// Change's fields. The first three are required.
var csvColumns = []string{"op", "product_coupon_id", "brand_id", "out_request_no", "display_info", "deactivate_reason", "not_before"}

const csvRequired = 3

// ChangeReader reads changes from a change file one at a time; it never
// holds more than one line. Every change it returns is valid (Validate).
type ChangeReader struct {
	format Format
	err    error // sticky: a read error, or io.EOF

	// JSONL
	br   *bufio.Reader
	line int
	buf  []byte

	// CSV
	cr     *csv.Reader
	header bool
	cols   []int // record index → csvColumns index
	lim    *limitedLines
}

// NewChangeReader returns a reader of changes in format f from r. An
// unknown format makes Next fail.
func NewChangeReader(r io.Reader, f Format) *ChangeReader {
	cr := &ChangeReader{format: f}
	switch f {
	case FormatJSONL:
		cr.br = bufio.NewReaderSize(r, 64<<10)
	case FormatCSV:
		cr.lim = &limitedLines{r: r}
		cr.cr = csv.NewReader(cr.lim)
		cr.cr.FieldsPerRecord = -1
	default:
		cr.err = fmt.Errorf("couponq: unknown change file format %q (want %s or %s)", f, FormatJSONL, FormatCSV)
	}
	return cr
}

// Next returns the next valid change. At the end it returns io.EOF. A bad
// line gives a *LineError (with the line number and the reason: malformed
// input, an unknown field or column, a *wechatpay.ValidationError) and the
// next call goes on with the following line. Any other error is a read
// error from the underlying reader, and final.
func (r *ChangeReader) Next() (Change, error) {
	if r.err != nil {
		return Change{}, r.err
	}
	if r.format == FormatCSV {
		return r.nextCSV()
	}
	return r.nextJSONL()
}

// Line is the line number of what Next returned last (for CSV, the line
// its record starts on).
func (r *ChangeReader) Line() int { return r.line }

// All returns the remaining changes as an iterator for
// Producer.EnqueueBatch: it yields each change or bad line in turn and ends
// at the end of input, after yielding a read error.
func (r *ChangeReader) All() iter.Seq2[Change, error] {
	return func(yield func(Change, error) bool) {
		for {
			c, err := r.Next()
			if errors.Is(err, io.EOF) {
				return
			}
			if !yield(c, err) {
				return
			}
			var le *LineError
			if err != nil && !errors.As(err, &le) {
				return
			}
		}
	}
}

var bom = []byte("\xef\xbb\xbf")

func (r *ChangeReader) nextJSONL() (Change, error) {
	for {
		line, tooLong, err := r.readLine()
		if err != nil && !errors.Is(err, io.EOF) {
			r.err = fmt.Errorf("couponq: read change file after line %d: %w", r.line, err)
			return Change{}, r.err
		}
		if errors.Is(err, io.EOF) && len(line) == 0 && !tooLong {
			r.err = io.EOF
			return Change{}, io.EOF
		}
		r.line++
		if tooLong {
			return Change{}, &LineError{Line: r.line, Err: errLineTooLong}
		}
		if r.line == 1 {
			line = bytes.TrimPrefix(line, bom)
		}
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		// Before decoding: encoding/json would put U+FFFD in place of invalid
		// bytes, and the change would carry text other than the file's.
		if i := invalidUTF8At(line); i >= 0 {
			return Change{}, &LineError{Line: r.line, Err: fmt.Errorf("invalid UTF-8 at byte %d", i+1)}
		}
		var c Change
		if err := decodeStrict(line, &c); err != nil {
			return Change{}, &LineError{Line: r.line, Err: err}
		}
		if err := c.Validate(); err != nil {
			return Change{}, &LineError{Line: r.line, Err: err}
		}
		return c, nil
	}
}

// readLine reads one line without its newline. A line longer than
// maxLineBytes is skipped to its end and reported as tooLong.
func (r *ChangeReader) readLine() (line []byte, tooLong bool, err error) {
	r.buf = r.buf[:0]
	for {
		chunk, err := r.br.ReadSlice('\n')
		if !tooLong {
			if len(r.buf)+len(chunk) > maxLineBytes+1 { // +1: the newline
				tooLong = true
				r.buf = r.buf[:0]
			} else {
				r.buf = append(r.buf, chunk...)
			}
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if tooLong {
			return nil, true, err
		}
		return bytes.TrimSuffix(r.buf, []byte("\n")), false, err
	}
}

func (r *ChangeReader) nextCSV() (Change, error) {
	if !r.header {
		if err := r.readHeader(); err != nil {
			return Change{}, err
		}
	}
	for {
		rec, err := r.cr.Read()
		if errors.Is(err, io.EOF) {
			r.err = io.EOF
			return Change{}, io.EOF
		}
		if err != nil {
			return Change{}, r.csvErr(err)
		}
		line, _ := r.cr.FieldPos(0)
		r.line = line
		if blank(rec) {
			continue
		}
		if len(rec) != len(r.cols) {
			return Change{}, &LineError{Line: line, Err: fmt.Errorf("has %d fields, the header has %d", len(rec), len(r.cols))}
		}
		c, err := r.changeOf(rec)
		for i, f := range rec {
			if at := invalidUTF8At([]byte(f)); at >= 0 {
				c, err = Change{}, fmt.Errorf("column %s: invalid UTF-8 at byte %d", csvColumns[r.cols[i]], at+1)
				break
			}
		}
		if err == nil {
			err = c.Validate()
		}
		if err != nil {
			return Change{}, &LineError{Line: line, Err: err}
		}
		return c, nil
	}
}

// csvErr turns a CSV read error into a *LineError (reading goes on) or a
// final error.
func (r *ChangeReader) csvErr(err error) error {
	var pe *csv.ParseError
	switch {
	case errors.Is(err, errLineTooLong):
		r.err = io.EOF // the CSV reader cannot resynchronise inside a record
		return &LineError{Line: r.lim.lines + 1, Err: errLineTooLong}
	case errors.As(err, &pe):
		return &LineError{Line: pe.StartLine, Err: csvError(pe)}
	}
	r.err = fmt.Errorf("couponq: read change file: %w", err)
	return r.err
}

func blank(rec []string) bool {
	for _, f := range rec {
		if strings.TrimSpace(f) != "" {
			return false
		}
	}
	return true
}

func csvError(pe *csv.ParseError) error {
	if pe.Line != pe.StartLine {
		return fmt.Errorf("malformed CSV at line %d, column %d: %w", pe.Line, pe.Column, pe.Err)
	}
	return fmt.Errorf("malformed CSV at column %d: %w", pe.Column, pe.Err)
}

// readHeader reads and checks the header row. A bad header ends the file:
// the error is returned once, then io.EOF.
func (r *ChangeReader) readHeader() error {
	r.header = true
	rec, err := r.cr.Read()
	if errors.Is(err, io.EOF) {
		r.err = io.EOF
		return io.EOF
	}
	if err != nil {
		err = r.csvErr(err)
		var le *LineError
		if errors.As(err, &le) {
			r.err = io.EOF
			le.Err = fmt.Errorf("header: %w", le.Err)
		}
		return err
	}
	line, _ := r.cr.FieldPos(0)
	fail := func(format string, args ...any) error {
		r.err = io.EOF
		return &LineError{Line: line, Err: fmt.Errorf("header: "+format, args...)}
	}
	seen := make(map[int]bool, len(rec))
	r.cols = make([]int, len(rec))
	for i, name := range rec {
		if i == 0 {
			name = strings.TrimPrefix(name, string(bom))
		}
		name = strings.TrimSpace(name)
		idx := -1
		for j, c := range csvColumns {
			if c == name {
				idx = j
			}
		}
		switch {
		case idx < 0:
			return fail("unknown column %q (columns: %s)", name, strings.Join(csvColumns, ", "))
		case seen[idx]:
			return fail("column %q appears twice", name)
		}
		seen[idx] = true
		r.cols[i] = idx
	}
	for j := range csvRequired {
		if !seen[j] {
			return fail("missing column %q", csvColumns[j])
		}
	}
	return nil
}

func (r *ChangeReader) changeOf(rec []string) (Change, error) {
	var c Change
	for i, v := range rec {
		v = strings.TrimSpace(v)
		switch csvColumns[r.cols[i]] {
		case "op":
			c.Op = Op(v)
		case "product_coupon_id":
			c.ProductCouponID = v
		case "brand_id":
			c.BrandID = v
		case "out_request_no":
			c.OutRequestNo = v
		case "display_info":
			if v == "" {
				continue
			}
			d := &wechatpay.DisplayInfo{}
			if err := decodeStrict([]byte(v), d); err != nil {
				return Change{}, fmt.Errorf("display_info: %w", err)
			}
			c.DisplayInfo = d
		case "deactivate_reason":
			c.DeactivateReason = v
		case "not_before":
			c.NotBefore = v
		}
	}
	return c, nil
}

// limitedLines feeds encoding/csv while refusing lines longer than
// maxLineBytes, so a file without newlines cannot make the CSV reader
// buffer all of it: such a line ends the file with errLineTooLong (the CSV
// reader cannot resynchronise inside a record it did not read).
type limitedLines struct {
	r     io.Reader
	run   int // bytes since the last newline
	lines int // newlines passed on
}

func (l *limitedLines) Read(p []byte) (int, error) {
	if l.run > maxLineBytes {
		return 0, errLineTooLong
	}
	if len(p) > maxLineBytes-l.run+1 {
		p = p[:maxLineBytes-l.run+1]
	}
	n, err := l.r.Read(p)
	for _, c := range p[:n] {
		if c == '\n' {
			l.run = 0
			l.lines++
		} else {
			l.run++
		}
	}
	return n, err
}

// invalidUTF8At returns the offset of the first byte of b that is not
// valid UTF-8, or -1.
func invalidUTF8At(b []byte) int {
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && n == 1 {
			return i
		}
		i += n
	}
	return -1
}

// PayloadSet remembers, for each task ID of a change file, the line that
// gave it first and a hash of its payload, in a fixed few dozen bytes a
// task whatever the lengths of IDs and payloads: what couponq enqueue's
// validation pass keeps to find a file giving one task ID two payloads,
// so that validating a file of millions of lines holds no line.
//
// Task IDs are kept as 128 bits of their SHA-256 and payloads as 64 bits
// of theirs: two different task IDs taken for one has odds of about
// n²/2¹²⁹ (10⁻²⁶ for a million lines), and a conflict missed here is one
// Redis still refuses (the result store compares the whole SHA-256 when
// the second change is accepted). The zero value is ready to use.
type PayloadSet struct {
	m map[[16]byte]payloadMark
}

type payloadMark struct {
	line uint32
	sum  [8]byte
}

// Add records the task ID's payload as given on line, unless the ID was
// seen before. It returns the line the ID was first given on (0 if this
// is the first) and whether that line gave another payload.
func (s *PayloadSet) Add(taskID string, payload []byte, line int) (first int, conflict bool) {
	if s.m == nil {
		s.m = make(map[[16]byte]payloadMark)
	}
	idSum := sha256.Sum256([]byte(taskID))
	var key [16]byte
	copy(key[:], idSum[:16])
	pSum := sha256.Sum256(payload)
	var sum [8]byte
	copy(sum[:], pSum[:8])
	if prev, ok := s.m[key]; ok {
		return int(prev.line), prev.sum != sum
	}
	s.m[key] = payloadMark{line: uint32(min(line, 1<<32-1)), sum: sum}
	return 0, false
}

// Len is the number of task IDs recorded.
func (s *PayloadSet) Len() int { return len(s.m) }
