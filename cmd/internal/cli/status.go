package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tunnelworks/tunnel/admin"
	"github.com/tunnelworks/tunnel/config"
)

// status prints the running agent's /status as tables.
func status(role Role, prog string, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet(prog, "status", "(-config FILE | -admin HOST:PORT) [-json]",
		"Show the running agent's sessions, forwards, services and certificate expiries, read\nfrom its admin listener (the config's admin block). Exit 1 when it is not healthy.")
	cfgPath := fs.String("config", "", "config file; its admin block says where the agent listens")
	addr := fs.String("admin", "", "admin address (host:port), instead of -config")
	asJSON := fs.Bool("json", false, "print the raw JSON")
	pos, err := parseFlags(fs, args, stdout, stderr)
	if err != nil {
		return exitCode(err)
	}
	if len(pos) > 0 {
		fmt.Fprintf(stderr, "%s status: unexpected argument %q\n", prog, pos[0])
		return exitUsage
	}
	if *addr == "" {
		if *cfgPath == "" {
			fmt.Fprintf(stderr, "%s status: give -config FILE or -admin HOST:PORT\n", prog)
			return exitUsage
		}
		a, err := adminFromConfig(role, *cfgPath)
		if err != nil {
			printLoadError(stderr, role, prog+" status", *cfgPath, err)
			return exitUsage
		}
		if a == "" {
			fmt.Fprintf(stderr, "%s status: %s has no admin block (add admin { listen = \"127.0.0.1:9090\" } and reload)\n", prog, *cfgPath)
			return exitUsage
		}
		*addr = a
	}
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + dialable(*addr) + "/status")
	if err != nil {
		fmt.Fprintf(stderr, "%s status: cannot reach the agent's admin listener at %s: %v (is it running?)\n", prog, *addr, err)
		return exitFailure
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "%s status: %s answered %s %v\n", prog, *addr, resp.Status, err)
		return exitFailure
	}
	if *asJSON {
		_, _ = stdout.Write(body)
		return exitOK
	}
	var st admin.Status
	if err := json.Unmarshal(body, &st); err != nil {
		fmt.Fprintf(stderr, "%s status: malformed answer from %s: %v\n", prog, *addr, err)
		return exitFailure
	}
	printStatus(stdout, st)
	if !st.Healthy {
		return exitFailure
	}
	return exitOK
}

// dialable turns a wildcard listen address into one to connect to.
func dialable(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return net.JoinHostPort(host, port)
}

func adminFromConfig(role Role, path string) (string, error) {
	if role == Server {
		cfg, err := config.LoadServer(path)
		if err != nil {
			return "", err
		}
		return cfg.Admin, nil
	}
	cfg, err := config.LoadClient(path)
	if err != nil {
		return "", err
	}
	return cfg.Admin, nil
}

func printStatus(w io.Writer, st admin.Status) {
	health := "healthy"
	if !st.Healthy {
		health = "NOT HEALTHY"
	}
	fmt.Fprintf(w, "tunnel-%s %s, up %s, %s\n", st.Agent, st.Version, st.Uptime, health)
	if st.LastError != "" {
		fmt.Fprintf(w, "last error: %s\n", st.LastError)
	}
	// A forward still on its old listener (or none) serves, but not as
	// the file says: say so where the eye lands first.
	for _, f := range st.Forwards {
		if f.NotApplied != "" {
			fmt.Fprintf(w, "not as in the config file: %s\n", f.NotApplied)
		}
	}
	// tabwriter pads every cell but a line's last; trailing spaces go when
	// the table is copied out below.
	var table bytes.Buffer
	tw := tabwriter.NewWriter(&table, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "\nSESSION\tCLASS\tREMOTE\tUP SINCE\tSTREAMS\tLEAST RTT\tSTREAM WINDOW\tTCP QUEUED IN / OUT")
	if len(st.Sessions) == 0 {
		fmt.Fprintln(tw, "(none)\t\t\t\t\t\t\t")
	}
	// Names need not be unique: where one names several certificates,
	// show each one's key too.
	keysOf := map[string]map[string]bool{}
	for _, s := range st.Sessions {
		if keysOf[s.Peer] == nil {
			keysOf[s.Peer] = map[string]bool{}
		}
		keysOf[s.Peer][s.Key] = true
	}
	for _, s := range st.Sessions {
		peer := s.Peer
		if len(keysOf[s.Peer]) > 1 && s.Key != "" {
			peer += " (" + s.Key + ")"
		}
		class := s.Class
		if s.Lane > 0 { // a further session of the class (bulk_connections)
			class += fmt.Sprintf(" (lane %d)", s.Lane)
		}
		rtt := "-" // no ping answered yet
		if s.LeastRTTMicros > 0 {
			rtt = (time.Duration(s.LeastRTTMicros) * time.Microsecond).String()
		}
		window := windowSize(s.StreamWindow)
		if s.LoneWindowLent > 0 { // its only bulk receiver's extra (lone window)
			window += " + " + windowSize(int(s.LoneWindowLent)) + " lent"
		}
		// What the kernel holds for the connection: the peer's bytes not
		// yet read, ours not yet acknowledged (a peer that stops reading
		// shows here first).
		queued := "-"
		if q := s.TCP; q != nil {
			queued = byteSize(q.Unread) + " / " + byteSize(q.SendQueue)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", peer, class, s.Remote, s.Since.Local().Format(time.DateTime), s.Streams, rtt, window, queued)
	}
	// Replaced by a reconnect, their streams finishing (drain_timeout).
	for _, s := range st.Draining {
		fmt.Fprintf(tw, "%s (draining)\t%s\t%s\t%s\t%d\t\t\t\n", s.Peer, s.Class, s.Remote, s.Since.Local().Format(time.DateTime), s.Streams)
	}
	for _, group := range []struct {
		title string
		list  []admin.ForwardStatus
	}{{"FORWARD", st.Forwards}, {"SERVICE", st.Services}} {
		if len(group.list) == 0 {
			continue
		}
		refused := group.title == "FORWARD" // local connections turned away; services have none
		header := "\n%s\tADDRESS\tCLASS\tOPEN\tTOTAL\tBYTES TO PEER\tBYTES FROM PEER\n"
		if refused {
			header = "\n%s\tADDRESS\tCLASS\tOPEN\tTOTAL\tBYTES TO PEER\tBYTES FROM PEER\tREFUSED\n"
		}
		fmt.Fprintf(tw, header, group.title)
		for _, f := range group.list {
			addr := f.Listen
			if addr == "" {
				addr = f.Target
			}
			if addr == "" && f.NotApplied != "" {
				addr = "(not listening)" // its listener could not be opened
			}
			// The class and where it came from: "control (service)" is
			// the class the other side gave its service.
			class := f.Class
			if f.ClassFrom != "" {
				class += " (" + f.ClassFrom + ")"
			}
			if refused {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\n", f.Name, addr, class, f.StreamsOpen, f.StreamsTotal, f.BytesToPeer, f.BytesFrom, f.Refused)
				continue
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%d\n", f.Name, addr, class, f.StreamsOpen, f.StreamsTotal, f.BytesToPeer, f.BytesFrom)
		}
	}
	fmt.Fprintln(tw, "\nEXPIRES\tNAME\tWHEN\tDAYS LEFT\t")
	for _, e := range st.Expiries {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t\n", e.What, e.Name, e.When.Format(time.DateOnly), e.DaysLeft)
	}
	_ = tw.Flush()
	for line := range strings.Lines(table.String()) {
		fmt.Fprintln(w, strings.TrimRight(line, " \n"))
	}
	if r := st.Resume; r != nil {
		fmt.Fprintf(w, "\nresumable streams: %d held, %d suspended, %d bytes in replay buffers; since start: %d resumed, %d expired, %d lost by the peer, %d resumes refused, %d bytes replayed\n",
			r.Streams, r.Suspended, r.ReplayBytes, r.Resumed, r.Expired, r.PeerLost, r.Refused, r.ReplayedBytes)
	}
}

// windowSize shows a stream window in KiB (MiB when whole), "-" when the
// agent does not tell.
// byteSize is n bytes, short: 0 B, 900 B, 12 KiB, 1.5 MiB.
func byteSize(n int) string {
	switch {
	case n < 1<<10:
		return fmt.Sprintf("%d B", n)
	case n < 1<<20:
		return fmt.Sprintf("%d KiB", (n+512)>>10)
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}

func windowSize(n int) string {
	switch {
	case n <= 0:
		return "-"
	case n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%d KiB", (n+512)>>10)
}
