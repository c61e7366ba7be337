//go:build !unix

package forward

// No direct delivery here.
const canWriteFD = false

func writeNoWait(uintptr, []byte) (int, error) { return 0, nil }
