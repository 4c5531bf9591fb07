package nfsfront

import (
	"testing"
	"time"
)

// A connection refused at the limit, then a counted one closing while the
// accept loop waits: the refusal must not read the connection table
// unlocked (go test -race caught the log line doing so).
func TestConnectionLimitRefusalThenClose(t *testing.T) {
	s := newRPCTestServer(t)
	s.cfg.MaxConnsPerClient = 1
	ls, _ := startServing(t, s)
	addr := ls.Addr().String()
	null := callRecord(0x77, progNFS, 3, 0, nil)

	held := dialRPC(t, addr)
	held.call(t, null) // counted and served
	refused := dialRPC(t, addr)
	defer refused.Close()
	if _, err := refused.recv(); err == nil {
		t.Fatal("connection over the per-client limit was served")
	}
	held.Close() // its goroutine leaves the table while Accept waits

	// Once the held connection is reaped, a new one is served.
	deadline := time.Now().Add(10 * time.Second)
	for {
		c := dialRPC(t, addr)
		c.send(t, null)
		reply, err := c.recv()
		c.Close()
		if err == nil {
			wantBytes(t, "NULL after the limit", reply, unhex(t, successHeader("00000077")))
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no connection served after the held one closed: %v", err)
		}
		time.Sleep(10 * time.Millisecond) // poll interval, not a wait for an event
	}
}
