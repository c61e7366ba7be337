package cli

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
)

// errHelp: -h, -help or --help was given and the usage went to stdout; the
// command exits 0.
var errHelp = errors.New("help requested")

// errBadFlags: the flag package has already said on stderr what is wrong;
// the command exits 2.
var errBadFlags = errors.New("bad flags")

// newFlagSet is the flags of "prog cmd". Its usage says how to call the
// command (synopsis), what it does (about) and every flag with its default.
func newFlagSet(prog, cmd, synopsis, about string) *flag.FlagSet {
	fs := flag.NewFlagSet(prog+" "+cmd, flag.ContinueOnError)
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "usage: %s %s %s\n", prog, cmd, synopsis)
		if about != "" {
			fmt.Fprintf(w, "\n%s\n", about)
		}
		n := 0
		fs.VisitAll(func(*flag.Flag) { n++ })
		if n > 0 {
			fmt.Fprintln(w, "\nflags (-flag and --flag are the same):")
			fs.PrintDefaults()
		}
	}
	return fs
}

// parseFlags parses args. Asked for help, it prints the usage to stdout
// and returns errHelp; a mistake is reported with the usage on stderr
// (errBadFlags). Positional arguments are returned; flags may come before,
// between or after them (`revoke --ca-dir D SERIAL --reason keyCompromise`),
// and everything after `--` is positional.
func parseFlags(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) ([]string, error) {
	// The flag package writes the usage to one output whether it was asked
	// for or follows a mistake; collect it and send it where it belongs.
	var buf bytes.Buffer
	fs.SetOutput(&buf)
	defer fs.SetOutput(stderr)
	var pos []string
	for range len(args) + 1 { // each round consumes at least one argument
		err := fs.Parse(args)
		switch {
		case errors.Is(err, flag.ErrHelp):
			_, _ = stdout.Write(buf.Bytes())
			return nil, errHelp
		case err != nil:
			_, _ = stderr.Write(buf.Bytes())
			return nil, errBadFlags
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		if len(args) > len(rest) && args[len(args)-len(rest)-1] == "--" {
			return append(pos, rest...), nil
		}
		pos, args = append(pos, rest[0]), rest[1:]
	}
	return pos, nil
}

// isHelp reports whether arg asks for help in place of a subcommand.
func isHelp(arg string) bool {
	switch arg {
	case "help", "-h", "-help", "--help":
		return true
	}
	return false
}

// exitCode is the exit status for an error from parseFlags.
func exitCode(err error) int {
	if errors.Is(err, errHelp) {
		return exitOK
	}
	return exitUsage
}
