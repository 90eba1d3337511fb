package redistest

import (
	"errors"
	"net"
	"testing"
)

// A port another process bound first is reported as taken (Start then
// tries another), not as a server that never answered.
func TestStartOnTakenPort(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	s := &Server{tb: t, bin: Require(t), dir: t.TempDir(), port: l.Addr().(*net.TCPAddr).Port}
	if err := s.startErr(); !errors.Is(err, errPortTaken) {
		t.Errorf("startErr on a taken port: %v, want errPortTaken", err)
	}
}
