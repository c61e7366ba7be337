//go:build unix

package forward

import "syscall"

const canWriteFD = true

// writeNoWait writes what the non-blocking socket fd takes now: 0 and no
// error when it is full.
func writeNoWait(fd uintptr, p []byte) (int, error) {
	for {
		n, err := syscall.Write(int(fd), p)
		switch err {
		case nil:
			return n, nil
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return 0, nil
		}
		return 0, err
	}
}
