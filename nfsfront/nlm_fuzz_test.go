package nfsfront

import (
	"context"
	"encoding/binary"
	"testing"
)

// FuzzNLM feeds arbitrary NLM and NSM calls, as they arrive over TCP or
// UDP, to a server keeping locks: nothing may panic, every call gets a
// reply to its xid, and the table's count matches what it holds.
func FuzzNLM(f *testing.F) {
	s, locks := newLockTestServer(f)
	fh := s.handleFor(creds{export: 0}, rootAttr)
	l := nlmLockSpec{caller: "alpha", fh: fh, oh: "1@alpha", svid: 1, offset: 5, len: 10}
	for i, args := range map[uint32][]byte{
		nlmProcTest:    nlmTestArgs("ck", true, l),
		nlmProcLock:    nlmLockArgs("ck", true, true, l),
		nlmProcCancel:  nlmCancelArgs("ck", l),
		nlmProcUnlock:  nlmUnlockArgs("ck", l),
		nlmProcGranted: nlmTestArgs("ck", false, l),
		nlmProcFreeAll: nameState("alpha", 3),
	} {
		f.Add(uint32(progNLM), uint32(nlmVers), i, args, false)
	}
	f.Add(uint32(progNSM), uint32(nsmVers), uint32(nsmProcNotify), nameState("10.1.2.3", 5), true)
	f.Add(uint32(progNSM), uint32(nsmVers), uint32(nsmProcMon), nameState("x", 1), true)
	tcp, udp := lockOrigin("10.1.2.3", false), lockOrigin("10.1.2.4", true)
	f.Fuzz(func(t *testing.T, prog, vers, proc uint32, args []byte, overUDP bool) {
		if prog%2 == 0 {
			prog = progNLM
		} else {
			prog = progNSM
		}
		o := tcp
		if overUDP {
			o = udp
		}
		reply, forward := s.dispatch(context.Background(), callRecord(0x99, prog, vers, proc, args), o)
		if forward || len(reply) < 24 || binary.BigEndian.Uint32(reply) != 0x99 {
			t.Fatalf("reply %x (forward %v)", reply, forward)
		}
		locks.mu.Lock()
		n := 0
		for _, held := range locks.files {
			n += len(held)
		}
		if n != locks.n {
			t.Errorf("table counts %d locks, holds %d", locks.n, n)
		}
		locks.mu.Unlock()
	})
}
