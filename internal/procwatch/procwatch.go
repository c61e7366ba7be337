// Package procwatch finds and watches processes through /proc, for the
// tests that hand an agent over to its successor (SIGUSR2) and must learn
// the new PID and when the old one has gone. Linux only: it reads /proc.
package procwatch

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Find is the pid of a process other than not run with exactly args
// (args[0] is not compared: a successor may be started by another path;
// each test's config path makes the rest its own), or 0.
func Find(args []string, not int) int {
	want := strings.Join(args[1:], "\x00")
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == not {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		got := strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
		if len(got) == len(args) && strings.Join(got[1:], "\x00") == want {
			return pid
		}
	}
	return 0
}

// Gone reports whether pid has exited (reaped, or a zombie nobody reaps).
func Gone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// pid (comm) state ...
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] == 'Z'
}
