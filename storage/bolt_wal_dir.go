package storage

import (
	"os"
	"runtime"
)

// syncDir makes a file created in dir survive a crash (its directory
// entry is on disk). Windows cannot sync a directory and does not need to.
func syncDir(dir string) error {
	if runtime.GOOS == "windows" {
		return nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
