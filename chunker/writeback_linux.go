package chunker

import (
	"os"

	"golang.org/x/sys/unix"
)

// startWriteback asks the kernel to start writing bytes [off, off+n) of f
// to the device without waiting for it (sync_file_range with
// SYNC_FILE_RANGE_WRITE), so that a later fsync has less left to wait
// for. It is a hint: durability still comes from that fsync, and an error
// here changes nothing.
func startWriteback(f *os.File, off, n int64) {
	_ = unix.SyncFileRange(int(f.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE)
}
