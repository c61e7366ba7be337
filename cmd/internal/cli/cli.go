// Package cli is the command line shared by tunnel-server and tunnel-client:
// run, validate, version and demo. It only wires configuration into the
// agent and handles signals.
package cli

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/kardianos/service"

	"github.com/tunnelworks/tunnel/agent"
	"github.com/tunnelworks/tunnel/config"
	"github.com/tunnelworks/tunnel/handover"
	"github.com/tunnelworks/tunnel/transport/ssl"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1 // the agent failed while running
	exitUsage   = 2 // bad command line, config or certificates: fix and retry
)

// Role is which agent a binary is.
type Role string

const (
	Server Role = "server"
	Client Role = "client"
)

// Main runs the binary for role with args (without the program name).
func Main(role Role, args []string, stdout, stderr io.Writer) int {
	prog := "tunnel-" + string(role)
	if len(args) == 0 {
		usage(prog, stderr)
		return exitUsage
	}
	switch args[0] {
	case "run":
		return run(role, prog, args[1:], stdout, stderr)
	case "validate":
		return validate(role, prog, args[1:], stdout, stderr)
	case "version":
		return version(prog, args[1:], stdout, stderr)
	case "--version", "-version":
		return version(prog, nil, stdout, stderr)
	case "demo":
		return demo(prog, args[1:], stdout, stderr)
	case "status":
		return status(role, prog, args[1:], stdout, stderr)
	case "cert":
		return certCmd(prog, args[1:], stdout, stderr)
	case "install", "uninstall", "start", "stop", "restart":
		return serviceCmd(role, prog, args[0], args[1:], stdout, stderr)
	case "help":
		if len(args) > 1 && !isHelp(args[1]) {
			// `help run` is `run -h`; `help cert issue` is `cert issue -h`.
			return Main(role, append(args[1:len(args):len(args)], "-h"), stdout, stderr)
		}
		usage(prog, stdout)
		return exitOK
	case "-h", "-help", "--help":
		usage(prog, stdout)
		return exitOK
	}
	fmt.Fprintf(stderr, "%s: unknown command %q\n", prog, args[0])
	usage(prog, stderr)
	return exitUsage
}

func usage(prog string, w io.Writer) {
	fmt.Fprintf(w, `usage: %[1]s <command> [flags]

commands:
  run -config FILE        run the agent (SIGINT/SIGTERM stop it gracefully, SIGHUP reloads,
                          SIGUSR2 hands over to the binary on disk)
  validate -config FILE   check the config and its certificates, list every problem
  status -config FILE     show the running agent's sessions, forwards and certificates
  cert ...                make a CA, issue, revoke and inspect certificates ('cert help')
  install -config FILE [-user tunnel] [-name NAME]
                          install as a system service (systemd, launchd, Windows)
  uninstall | start | stop | restart [-name NAME]
                          control the installed service
  demo                    run a server and a client on loopback with a throwaway CA
  version, --version      print the version

'%[1]s help COMMAND' or '%[1]s COMMAND -h' shows a command's flags and defaults.
Exit status: 0 success, 1 the agent failed while running, 2 bad command
line, config or certificates.
`, prog)
}

func version(prog string, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet(prog, "version", "", "Print the version of this program and of the tunnel protocol it speaks.")
	pos, err := parseFlags(fs, args, stdout, stderr)
	if err != nil {
		return exitCode(err)
	}
	if len(pos) > 0 {
		fmt.Fprintf(stderr, "%s version: unexpected argument %q\n", prog, pos[0])
		return exitUsage
	}
	fmt.Fprintf(stdout, "%s %s (tunnel protocol %d)\n", prog, agent.Version, 1)
	return exitOK
}

type runFlags struct {
	config    string
	logLevel  string
	logFormat string
	online    bool // validate: also connect to the server
}

// agentFlags parses the flags of run and validate (withLog: also the log
// overrides). ok is false when the command should exit with code.
func agentFlags(prog, cmd string, args []string, stdout, stderr io.Writer, withLog bool) (f runFlags, code int, ok bool) {
	synopsis, about := "-config FILE [-online]", `Check the config file and its certificates offline (readable, key matches, not expired,
issued for this side's use) and list every problem at once; exit 2 if there is one.
Warnings and notes do not change the exit status.

With -online (tunnel-client), also connect to each server as the agent would: resolve,
connect, TLS with our certificate, the server's chain, the server's verdict on our
certificate; each step is printed and a failure is said in one line (exit 1 when no
server accepted us). It starts no session: a running client is not disturbed.`
	if withLog {
		synopsis = "-config FILE [-log-level LEVEL] [-log-format text|json]"
		about = "Run the agent in the foreground. SIGINT or SIGTERM stops it gracefully (a second one\nexits at once); SIGHUP reloads the config and certificates; SIGUSR2 starts the binary\non disk, which takes over the listeners, and this process then drains and exits."
	}
	fs := newFlagSet(prog, cmd, synopsis, about)
	fs.StringVar(&f.config, "config", "", "config file (required)")
	if cmd == "validate" {
		fs.BoolVar(&f.online, "online", false, "tunnel-client: also connect to the server and complete the TLS handshake")
	}
	if withLog {
		fs.StringVar(&f.logLevel, "log-level", "", "override log_level: trace, debug, info, warn, error")
		fs.StringVar(&f.logFormat, "log-format", "", "override log_format: text or json")
	}
	pos, err := parseFlags(fs, args, stdout, stderr)
	if err != nil {
		return f, exitCode(err), false
	}
	fail := func(format string, a ...any) (runFlags, int, bool) {
		fmt.Fprintf(stderr, "%s %s: %s\n", prog, cmd, fmt.Sprintf(format, a...))
		return f, exitUsage, false
	}
	if len(pos) > 0 && f.config == "" {
		// The usual slip: the file named without its flag.
		return fail("unexpected argument %q (the config file goes after -config: -config %s)", pos[0], pos[0])
	}
	if len(pos) > 0 {
		return fail("unexpected argument %q", pos[0])
	}
	if f.config == "" {
		return fail("-config FILE is required")
	}
	switch f.logLevel {
	case "", "trace", "debug", "info", "warn", "error":
	default:
		return fail("-log-level %q: want trace, debug, info, warn or error", f.logLevel)
	}
	switch f.logFormat {
	case "", "text", "json":
	default:
		return fail("-log-format %q: want text or json", f.logFormat)
	}
	return f, exitOK, true
}

// runner is what both agents are.
type runner interface {
	Run(context.Context) error
	Reload() error
}

// handingOver is what upgradeOnUSR2 needs of an agent.
type handingOver interface {
	HandOver(context.Context) error
}

// agentRunner is both agents as run starts them.
type agentRunner interface {
	runner
	handingOver
	UseHandover(*handover.Handover)
	ManageGoProcs()
}

func run(role Role, prog string, args []string, stdout, stderr io.Writer) int {
	f, code, ok := agentFlags(prog, "run", args, stdout, stderr, true)
	if !ok {
		return code
	}
	var (
		a             agentRunner
		level, format string
		log           hclog.Logger
		err           error
		scm           *scmProgram
		svc           service.Service
	)
	if underServiceManager() {
		// Logs and errors go to the event log from here on.
		if scm, svc, stderr, err = startServiceManagerRun(prog); err != nil {
			fmt.Fprintf(stderr, "%s: %v\n", prog, err)
			return exitFailure
		}
	}
	switch role {
	case Server:
		var cfg *config.Server
		if cfg, err = config.LoadServer(f.config); err != nil {
			printLoadError(stderr, role, prog, f.config, err)
			return exitUsage
		}
		level, format = pick(f.logLevel, cfg.LogLevel), pick(f.logFormat, cfg.LogFormat)
		log = agent.NewLogger(prog, level, format, stderr)
		a, err = agent.NewServer(cfg, log)
	case Client:
		var cfg *config.Client
		if cfg, err = config.LoadClient(f.config); err != nil {
			printLoadError(stderr, role, prog, f.config, err)
			return exitUsage
		}
		level, format = pick(f.logLevel, cfg.LogLevel), pick(f.logFormat, cfg.LogFormat)
		log = agent.NewLogger(prog, level, format, stderr)
		a, err = agent.NewClient(cfg, log)
	}
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", prog, err)
		return exitUsage
	}
	// A CPU quota or a GOMAXPROCS left from tuning shows here first.
	log.Info("go scheduler", "procs", runtime.GOMAXPROCS(0), "cpus", runtime.NumCPU())
	// The process is the agent's: it may run one-way transfers on one P.
	a.ManageGoProcs()
	if scm != nil {
		scm.a = a
		if err := svc.Run(); err != nil {
			fmt.Fprintf(stderr, "%s: service manager: %v\n", prog, err)
			return exitFailure
		}
		return exitOK
	}
	// Listeners go through the handover, so that SIGUSR2's successor
	// inherits them; where it is not supported they are plain.
	h, err := handover.New(handover.Options{Logger: log.Named("handover")})
	switch {
	case errors.Is(err, handover.ErrNotSupported):
	case errors.Is(err, handover.ErrUnavailable):
		log.Warn("SIGUSR2 upgrades are off for this process", "error", err)
	case err != nil:
		fmt.Fprintf(stderr, "%s: %v\n", prog, err)
		return exitFailure
	default:
		defer h.Stop()
	}
	a.UseHandover(h)
	ctx, stop := signalContext(log)
	defer stop()
	stopReloads := reloadOnHUP(a, log)
	defer stopReloads()
	stopUpgrades := upgradeOnUSR2(ctx, a, log)
	defer stopUpgrades()
	if err := a.Run(ctx); err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", prog, err)
		return exitFailure
	}
	return exitOK
}

// reloadOnHUP reloads the agent on every SIGHUP; a failed reload keeps the
// running configuration and says why.
func reloadOnHUP(a runner, log hclog.Logger) (stop func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-done:
				return
			case <-hup:
				log.Info("SIGHUP received: reloading")
				if err := a.Reload(); err != nil {
					agent.LogReloadFailure(log, err)
				}
			}
		}
	})
	return func() {
		signal.Stop(hup)
		close(done)
		wg.Wait()
	}
}

func pick(flagValue, configValue string) string {
	if flagValue != "" {
		return flagValue
	}
	return configValue
}

// signalContext is cancelled by the first SIGINT or SIGTERM (graceful stop);
// a second one exits at once. Both are logged in the agent's log format.
func signalContext(log hclog.Logger) (context.Context, func()) {
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		select {
		case s := <-sigs:
			log.Info("stopping gracefully: " + signalName(s) + " received (send it again to stop at once)")
			cancel()
		case <-done:
			return
		}
		select {
		case s := <-sigs:
			log.Warn("stopping at once: a second signal (" + signalName(s) + ") received")
			os.Exit(exitFailure)
		case <-done:
		}
	}()
	return ctx, func() {
		signal.Stop(sigs)
		close(done)
		cancel()
	}
}

// signalName is the name an operator sends the signal by (SIGTERM, not
// "terminated").
func signalName(s os.Signal) string {
	switch s {
	case syscall.SIGINT:
		return "SIGINT (Ctrl-C)"
	case syscall.SIGTERM:
		return "SIGTERM"
	case syscall.SIGHUP:
		return "SIGHUP"
	}
	return s.String()
}

func validate(role Role, prog string, args []string, stdout, stderr io.Writer) int {
	f, code, ok := agentFlags(prog, "validate", args, stdout, stderr, false)
	if !ok {
		return code
	}
	if f.online && role != Client {
		fmt.Fprintf(stderr, "%s validate: -online is for tunnel-client: it connects to the server (run it on a client host)\n", prog)
		return exitUsage
	}
	var (
		spec      ssl.PolicySpec
		usage     x509.ExtKeyUsage
		window    time.Duration
		summary   string
		setup     []string
		clientCfg *config.Client
		err       error
	)
	switch role {
	case Server:
		var cfg *config.Server
		if cfg, err = config.LoadServer(f.config); err == nil {
			spec = ssl.PolicySpec{Cert: cfg.TLS.Cert, Key: cfg.TLS.Key, CA: cfg.TLS.CA, CRLs: cfg.TLS.CRL, CRLStale: cfg.TLS.CRLStale}
			usage, window = x509.ExtKeyUsageServerAuth, cfg.ExpiryWarning
			summary = fmt.Sprintf("listen %s, %d services, %d forwards", cfg.Listen, len(cfg.Services), len(cfg.Forwards))
			setup = agent.SetupWarnings(cfg.TLS.Key, cfg.Admin, cfg.AdminPublic)
		}
	case Client:
		var cfg *config.Client
		if cfg, err = config.LoadClient(f.config); err == nil {
			clientCfg = cfg
			spec = ssl.PolicySpec{Cert: cfg.TLS.Cert, Key: cfg.TLS.Key, CA: cfg.TLS.CA, CRLs: cfg.TLS.CRL, CRLStale: cfg.TLS.CRLStale}
			usage, window = x509.ExtKeyUsageClientAuth, cfg.ExpiryWarning
			summary = fmt.Sprintf("servers %v, %d forwards, %d services", cfg.Servers, len(cfg.Forwards), len(cfg.Services))
			setup = agent.SetupWarnings(cfg.TLS.Key, cfg.Admin, cfg.AdminPublic)
		}
	}
	if err != nil {
		printLoadError(stderr, role, prog, f.config, err)
		return exitUsage
	}
	now := time.Now()
	p, err := ssl.LoadPolicy(spec)
	if err != nil {
		// Every file that failed, and what our certificate alone shows
		// (an expired one beside a broken CA bundle): all in one run.
		for line := range strings.SplitSeq(err.Error(), "\n") {
			fmt.Fprintf(stderr, "%s: tls: %s\n", f.config, line)
		}
		for _, pr := range ssl.CheckPair(spec.Cert, spec.Key, now, usage) {
			fmt.Fprintf(stderr, "%s: tls: %v\n", f.config, pr)
		}
		return exitUsage
	}
	problems, warnings := p.CheckOwn(now, usage)
	for _, e := range p.Expiries() {
		if left := e.When.Sub(now); left > 0 && left < e.Window(window) {
			when := e.When.UTC().Format(time.DateOnly)
			if e.What == "CRL next update" {
				warnings = append(warnings, fmt.Errorf("CRL %s is due for its next update in %s (%s): re-sign it (cert revoke with no serial) and copy it to the agents", e.Name, timeLeft(left), when))
			} else {
				warnings = append(warnings, fmt.Errorf("%s %s expires in %s (%s)", e.What, e.Name, timeLeft(left), when))
			}
		}
	}
	for _, w := range warnings {
		fmt.Fprintf(stderr, "%s: warning: %v\n", f.config, w)
	}
	for _, w := range setup {
		fmt.Fprintf(stderr, "%s: warning: %s\n", f.config, w)
	}
	if len(problems) > 0 {
		for _, pr := range problems {
			fmt.Fprintf(stderr, "%s: tls: %v\n", f.config, pr)
		}
		return exitUsage
	}
	leaf := p.Material.Leaf
	if !p.Material.ChainsToBundle(now) {
		// Not a problem: tls.ca is what the peer's certificate must chain to.
		fmt.Fprintf(stdout, "%s: note: our certificate %s is not issued by a CA in tls.ca %s; the peer must trust its issuer (%s)\n",
			f.config, spec.Cert, spec.CA, leaf.Issuer.CommonName)
	}
	fmt.Fprintf(stdout, "%s: ok (%s; certificate %q valid until %s)\n", f.config, summary, leaf.Subject.CommonName, leaf.NotAfter.UTC().Format(time.DateOnly))
	if f.online {
		if !checkOnline(context.Background(), clientCfg, spec, stdout) {
			fmt.Fprintf(stdout, "%s: online: no server accepted us as %s\n", f.config, ourIdentity(leaf))
			return exitFailure
		}
		fmt.Fprintf(stdout, "%s: online: ok, a server accepts us as %s\n", f.config, ourIdentity(leaf))
	}
	return exitOK
}

// timeLeft says how long d is in the unit an operator plans with.
func timeLeft(d time.Duration) string {
	if d < 48*time.Hour {
		return fmt.Sprintf("%d hours", int(d.Hours()))
	}
	return fmt.Sprintf("%d days", int(d.Hours()/24))
}

func demo(prog string, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet(prog, "demo", "", `Run a server and a client on loopback, mutually authenticated with a throwaway CA
held in a temporary directory, with an echo service on each side and a forward
in each direction. It prints the two ports to try; Ctrl-C stops it and removes
everything it wrote.`)
	pos, err := parseFlags(fs, args, stdout, stderr)
	if err != nil {
		return exitCode(err)
	}
	if len(pos) > 0 {
		fmt.Fprintf(stderr, "%s demo: takes no arguments\n", prog)
		return exitUsage
	}
	log := agent.NewLogger(prog, "info", "text", stderr)
	ctx, stop := signalContext(log)
	defer stop()
	if err := agent.RunDemo(ctx, stdout, log); err != nil {
		fmt.Fprintf(stderr, "%s demo: %v\n", prog, err)
		return exitFailure
	}
	return exitOK
}
