//go:build !linux

package sockopt

// queues: only Linux's are read.
func queues(uintptr) (Queues, bool) { return Queues{}, false }
