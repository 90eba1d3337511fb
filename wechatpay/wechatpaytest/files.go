package wechatpaytest

import (
	"os"
	"path/filepath"
)

// writePrivateFile writes data to path as a new file of mode 0600: into a
// temporary file in the same directory (created exclusively, so with no
// symlink followed), then renamed over path. Whatever path was before — a
// file of another mode, a symlink planted there — it is replaced, never
// written through, and no reader sees a partial file.
func writePrivateFile(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	done := false
	defer func() {
		if !done {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	// CreateTemp makes 0600 already; Chmod says so whatever the platform.
	if err := tmp.Chmod(0o600); err != nil {
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	done = true
	return nil
}
