//go:build linux

package storage

import (
	"os"
	"syscall"
)

// fdatasync flushes f's data (and the size, which reading it back needs)
// without the rest of its metadata, as bbolt does on Linux.
func fdatasync(f *os.File) error {
	for {
		err := syscall.Fdatasync(int(f.Fd()))
		if err != syscall.EINTR {
			return err
		}
	}
}
