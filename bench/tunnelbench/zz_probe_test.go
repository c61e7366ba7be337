package tunnelbench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var probeFuncs = []string{"runtime.handoffp", "runtime.exitsyscallNoP", "runtime.exitsyscallTryGetP", "runtime.startm", "runtime.stopm", "runtime.wakep", "runtime.netpollblock"}

func addProbes(t *testing.T, tag, bin string) []string {
	var ev []string
	for i, f := range probeFuncs {
		name := fmt.Sprintf("%s%d", tag, i)
		exec.Command("perf", "probe", "-d", "zz:"+name).Run()
		out, err := exec.Command("perf", "probe", "-x", bin, "-a", "zz:"+name+"="+f).CombinedOutput()
		if err != nil {
			t.Fatalf("probe %s: %v %s", f, err, out)
		}
		ev = append(ev, "zz:"+name)
	}
	return ev
}

func TestZZProbe(t *testing.T) {
	if os.Getenv("ZZPROBE") == "" {
		t.Skip()
	}
	w, err := newWorkspace(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer w.remove()
	tg, err := startTargets()
	if err != nil {
		t.Fatal(err)
	}
	defer tg.close()
	streams, _ := strconv.Atoi(os.Getenv("ZZSTREAMS"))
	if streams == 0 {
		streams = 1
	}
	type pth struct {
		name string
		dial dialer
		pids []int
		bins []string
	}
	var paths []pth
	builds := []agentBuild{{label: "cur", server: w.server, client: w.client}}
	if d := os.Getenv("ZZOTHER"); d != "" {
		bs, err := parseAgentBuilds(d)
		if err != nil {
			t.Fatal(err)
		}
		builds = append(builds, bs...)
	}
	for _, b := range builds {
		tun, err := w.startTunnelBuild(b, "p"+b.label, map[string]string{"sink": tg.sink, "echo": tg.echo}, loopbackForwards, 2, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer tun.stop()
		paths = append(paths, pth{b.label, tcpDialer(tun.forwards["sink"]), tun.pids(), []string{b.server, b.client}})
	}
	c, err := startGhostunnel("/tmp/gbin/ghostunnel", w.pki, []string{tg.echo, tg.sink})
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	paths = append(paths, pth{"ghost", c.dialer(1), c.pids(1), []string{"/tmp/gbin/ghostunnel"}})
	rounds, _ := strconv.Atoi(os.Getenv("ZZROUNDS"))
	for round := 0; round < max(rounds, 1); round++ {
		for pj := range paths {
			pi := (pj + round) % len(paths)
			p := paths[pi]
			var ev []string
			for bi, bin := range p.bins {
				if os.Getenv("ZZPROF") != "" || os.Getenv("ZZNOPROBE") != "" {
					break
				}
				ev = append(ev, addProbes(t, fmt.Sprintf("p%db%d", pi, bi), bin)...)
			}
			ev = append(ev, "context-switches", "syscalls:sys_enter_nanosleep", "syscalls:sys_enter_futex", "syscalls:sys_enter_epoll_pwait", "syscalls:sys_enter_write", "syscalls:sys_enter_read")
			ps := make([]string, len(p.pids))
			for i, x := range p.pids {
				ps[i] = strconv.Itoa(x)
			}
			cmd := exec.Command("perf", "stat", "-x", ",", "-e", strings.Join(ev, ","), "-p", strings.Join(ps, ","))
			if os.Getenv("ZZPROF") != "" {
				if round > 0 {
					continue
				}
				cmd = exec.Command("perf", "record", "-F", "2999", "-g", "-o", fmt.Sprintf("/tmp/zzprof%d.data", pi), "-p", strings.Join(ps, ","))
			} else if os.Getenv("ZZRECORD") != "" {
				if strconv.Itoa(pi) != os.Getenv("ZZRECPATH") || round > 0 {
					continue
				}
				var rec []string
				for _, e := range ev {
					if strings.HasPrefix(e, "zz:") {
						rec = append(rec, "-e", e)
					}
				}
				cmd = exec.Command("perf", append(append([]string{"record", "-g", "-o", "/tmp/zz.data"}, rec...), "-p", strings.Join(ps, ","))...)
			}
			var out bytes.Buffer
			cmd.Stderr = &out
			cmd.Start()
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			time.Sleep(200 * time.Millisecond)
			idle0, tot0 := procStat()
			self0, _ := cpuSeconds(os.Getpid())
			ag0, _ := sumOver(p.pids, cpuSeconds)
			if os.Getenv("ZZSIG") != "" && round == 0 {
				go func() {
					time.Sleep(time.Second)
					for _, pid := range p.pids {
						syscall.Kill(pid, syscall.SIGWINCH)
					}
				}()
			}
			gbps, moved, err := throughput(p.dial, streams, 3*time.Second)
			idle1, tot1 := procStat()
			self1, _ := cpuSeconds(os.Getpid())
			ag1, _ := sumOver(p.pids, cpuSeconds)
			t.Logf("%s: machine busy %.1f%%, bench process %.2f CPU-s/GB, agents %.2f CPU-s/GB", p.name, 100*(1-(idle1-idle0)/(tot1-tot0)), (self1-self0)/(float64(moved)/1e9), (ag1-ag0)/(float64(moved)/1e9))
			interruptPerf(cmd, done, "perf")
			if err != nil {
				t.Fatal(err)
			}
			agg := map[string]float64{}
			for _, line := range strings.Split(out.String(), "\n") {
				f := strings.Split(line, ",")
				if len(f) < 3 {
					continue
				}
				v, _ := strconv.ParseFloat(f[0], 64)
				name := f[2]
				if strings.HasPrefix(name, "zz:") {
					k, _ := strconv.Atoi(name[len(name)-1:])
					name = probeFuncs[k]
				}
				agg[name] += v
			}
			gb := float64(moved) / 1e9
			t.Logf("%s: %.2f Gbit/s", p.name, gbps)
			for _, k := range append(append([]string{}, probeFuncs...), "context-switches", "syscalls:sys_enter_nanosleep", "syscalls:sys_enter_futex", "syscalls:sys_enter_epoll_pwait", "syscalls:sys_enter_write", "syscalls:sys_enter_read") {
				t.Logf("  %-32s %8.1fk/GB", k, agg[k]/gb/1000)
			}
		}
	}
}

func procStat() (idle, total float64) {
	b, _ := os.ReadFile("/proc/stat")
	f := strings.Fields(strings.SplitN(string(b), "\n", 2)[0])
	for i, x := range f[1:] {
		v, _ := strconv.ParseFloat(x, 64)
		total += v
		if i == 3 || i == 4 {
			idle += v
		}
	}
	return
}

func TestZZLoad(t *testing.T) {
	if os.Getenv("ZZLOAD") == "" {
		t.Skip()
	}
	w, err := newWorkspace(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer w.remove()
	tg, err := startTargets()
	if err != nil {
		t.Fatal(err)
	}
	defer tg.close()
	builds := []agentBuild{{label: "cur", server: w.server, client: w.client}}
	if d := os.Getenv("ZZOTHER"); d != "" {
		bs, err := parseAgentBuilds(d)
		if err != nil {
			t.Fatal(err)
		}
		builds = append(builds, bs...)
	}
	type pth struct {
		name                string
		sink, echo, echoBlk dialer
		tun                 *tunnel
	}
	var paths []pth
	for _, b := range builds {
		tun, err := w.startTunnelBuild(b, "p"+b.label, map[string]string{"sink": tg.sink, "echo": tg.echo}, loopbackForwards, 2, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer tun.stop()
		paths = append(paths, pth{b.label, tcpDialer(tun.forwards["sink"]), tcpDialer(tun.forwards["echo"]), tcpDialer(tun.forwards["echo-bulk"]), tun})
	}
	rounds, _ := strconv.Atoi(os.Getenv("ZZROUNDS"))
	for round := 0; round < max(rounds, 1); round++ {
		for pj := range paths {
			p := paths[(pj+round)%len(paths)]
			if os.Getenv("ZZPRE") != "" {
				if _, _, err := throughput(p.sink, 8, 2*time.Second); err != nil {
					t.Fatal(err)
				}
			}
			if os.Getenv("ZZRT") != "" {
				if _, err := pingPong(p.echo, 5000, 64, time.Now().Add(30*time.Second)); err != nil {
					t.Fatal(err)
				}
			}
			for _, same := range []bool{false, true} {
				d := p.echo
				if same {
					d = p.echoBlk
				}
				if os.Getenv("ZZSIG") != "" && round == 0 && !same {
					pids := p.tun.pids()
					go func() {
						time.Sleep(3500 * time.Millisecond)
						ss := func() string {
							out, _ := exec.Command("sh", "-c", fmt.Sprintf("ss -tinpH | grep -A1 'pid=%d,' | grep -o 'bytes_acked:[0-9]*\\|127.0.0.1:[0-9]* *127.0.0.1:[0-9]*'", pids[1])).Output()
							return string(out)
						}
						a := ss()
						time.Sleep(time.Second)
						t.Logf("%s ss before:\n%s\nafter:\n%s", p.name, a, ss())

					}()
				}
				r, bb, err := underLoad(p.sink, d, 4, 5*time.Second, 500*time.Millisecond)
				t.Logf("%s same=%v bulk %.2f Gbit/s", p.name, same, float64(bb)*8/2.5e9)
				if err != nil {
					t.Fatal(err)
				}
				var cum time.Duration
				k := 0
				for k < len(r) && cum < 2000*time.Millisecond {
					cum += r[k]
					k++
				}
				head, rest := slices.Clone(r[:k]), slices.Clone(r[k:])
				slices.Sort(head)
				slices.Sort(rest)
				t.Logf("%s same=%v: first 200ms n=%d p50 %v max %v; rest n=%d p50 %v p99 %v", p.name, same, len(head), head[len(head)/2], head[len(head)-1], len(rest), rest[len(rest)/2], rest[len(rest)*99/100])
				slices.Sort(r)
				t.Logf("%s same=%v: n=%d p50 %v p90 %v p99 %v", p.name, same, len(r), r[len(r)/2], r[len(r)*9/10], r[len(r)*99/100])
			}
		}
	}
	for _, p := range paths {
		t.Logf("%s\n%s", p.name, p.tun.logTails())
	}
}

func TestZZEcho(t *testing.T) {
	if os.Getenv("ZZECHO") == "" {
		t.Skip()
	}
	w, err := newWorkspace(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer w.remove()
	tg, err := startTargets()
	if err != nil {
		t.Fatal(err)
	}
	defer tg.close()
	builds := []agentBuild{{label: "cur", server: w.server, client: w.client}}
	if d := os.Getenv("ZZOTHER"); d != "" {
		bs, _ := parseAgentBuilds(d)
		builds = append(builds, bs...)
	}
	for _, b := range builds {
		tun, err := w.startTunnelBuild(b, "p"+b.label, map[string]string{"sink": tg.sink, "echo": tg.echo}, loopbackForwards, 2, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer tun.stop()
		for _, light := range []bool{false, true} {
			if light {
				lc, err := net.Dial("tcp", tun.forwards["echo-bulk"])
				if err != nil {
					t.Fatal(err)
				}
				defer lc.Close()
				lc.Write([]byte("x"))
				io.ReadFull(lc, make([]byte, 1))
			}
			const per = 32 << 20
			start := time.Now()
			var wg sync.WaitGroup
			for i := 0; i < 4; i++ {
				wg.Go(func() {
					c, err := net.Dial("tcp", tun.forwards["echo-bulk"])
					if err != nil {
						t.Error(err)
						return
					}
					defer c.Close()
					c.SetDeadline(time.Now().Add(60 * time.Second))
					go func() {
						buf := make([]byte, 64<<10)
						for n := 0; n < per; n += len(buf) {
							if _, err := c.Write(buf); err != nil {
								return
							}
						}
					}()
					if _, err := io.CopyN(io.Discard, c, per); err != nil {
						t.Error(err)
					}
				})
			}
			wg.Wait()
			el := time.Since(start)
			t.Logf("%s light=%v: 4 x %d MiB echoed in %v: %.2f Gbit/s each way", b.label, light, per>>20, el, float64(4*per)*8/el.Seconds()/1e9)
		}
	}
}
