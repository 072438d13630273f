// Command csi-load is a lean load generator for a Secrets Store CSI provider
// (gRPC over a unix socket, as the driver dials it: insecure, authority
// "localhost", wait-for-ready). It sends prepared MountRequests, one per pod,
// read from a JSON file, and prints one JSON line with latency percentiles and
// errors by MountResponse.error.code.
//
// It avoids protoc: the four MountRequest strings are encoded by hand with
// protowire and a codec passes raw bytes through gRPC, so requests are
// encoded once and the client costs little CPU per call.
//
// The requests file is a JSON array of
//
//	{"attributes": "<json>", "secrets": "null", "target_path": "/...", "permission": "420"}
//
// Modes:
//
//	cold    each request once, in order, one at a time
//	warm    request -index, -warmup-calls unmeasured then -repeat measured, one at a time
//	steady  every request once per -interval for -rounds rounds, on a fixed open-loop
//	        schedule (pod i at offset i*interval/P of each round), each call on its own
//	        goroutine so a slow answer never delays the schedule
//
// Build with bench/buildGoClient.sh csi-load, then for example:
//
//	csi-load -socket /run/keyward.sock -requests pods.json -mode steady -interval 6s -rounds 5
package main

import (
	"context"
	"flag"
	"math"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"

	"keyward.local/bench/load/wire"
)

const name = "csi-load" // prefixes error messages

// ---------------------------------------------------------------- options

type options struct {
	socket      string
	requests    string
	mode        string
	index       int
	repeat      int
	warmupCalls int
	interval    time.Duration
	rounds      int
	timeout     time.Duration
	expectFiles int
	label       string
}

func parseFlags() options {
	var o options
	flag.StringVar(&o.socket, "socket", "", "path of the provider's unix socket (required)")
	flag.StringVar(&o.requests, "requests", "", "JSON file: an array of MountRequests, one per pod (required)")
	flag.StringVar(&o.mode, "mode", "cold", "cold | warm | steady")
	flag.IntVar(&o.index, "index", 0, "warm: which request to repeat")
	flag.IntVar(&o.repeat, "repeat", 1000, "warm: measured calls")
	flag.IntVar(&o.warmupCalls, "warmup-calls", 10, "warm: unmeasured calls first")
	flag.DurationVar(&o.interval, "interval", 6*time.Second, "steady: every pod remounts once per interval (a compressed minute)")
	flag.IntVar(&o.rounds, "rounds", 5, "steady: how many intervals")
	flag.DurationVar(&o.timeout, "timeout", 30*time.Second, "per-call timeout (kubelet gives a mount 2 min); 0 = none")
	flag.IntVar(&o.expectFiles, "expect-files", 0, "files a served Mount must return; 0 = at least one")
	flag.StringVar(&o.label, "label", "", "free text copied into the output")
	flag.Parse()

	var bad []string
	if o.socket == "" || o.requests == "" {
		bad = append(bad, "-socket and -requests are required")
	}
	if o.mode != "cold" && o.mode != "warm" && o.mode != "steady" {
		bad = append(bad, "-mode must be cold, warm or steady")
	}
	if o.index < 0 || o.repeat < 1 || o.warmupCalls < 0 {
		bad = append(bad, "-index and -warmup-calls must be >= 0, -repeat >= 1")
	}
	if o.interval <= 0 || o.rounds < 1 || o.timeout < 0 || o.expectFiles < 0 {
		bad = append(bad, "-interval must be > 0, -rounds >= 1, -timeout and -expect-files >= 0")
	}
	wire.RejectFlags(name, bad)
	return o
}

func fail(format string, args ...any) { wire.Fail(name, format, args...) }

// ---------------------------------------------------------------- calls

type client struct {
	conn        *grpc.ClientConn
	timeout     time.Duration
	expectFiles int
}

// mount makes one call; see wire.Mount for what it returns.
func (c *client) mount(req []byte) string {
	return wire.Mount(c.conn, req, c.timeout, c.expectFiles)
}

// ---------------------------------------------------------------- results

// results collects the latencies of successful calls and counts failures by
// code. Failures are left out of the percentiles: they often return in
// microseconds and would flatter them.
type results struct {
	mu        sync.Mutex
	latencies []time.Duration
	calls     int
	errors    map[string]int
}

func newResults(capacity int) *results {
	return &results{latencies: make([]time.Duration, 0, capacity), errors: map[string]int{}}
}

func (r *results) add(latency time.Duration, code string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	if code == "" {
		r.latencies = append(r.latencies, latency)
		return
	}
	r.errors[code]++
}

type summary struct {
	Calls        int            `json:"calls"`
	Errors       int            `json:"errors"`
	ErrorsByCode map[string]int `json:"errors_by_code"`
	wire.Latency
	MeanMs float64 `json:"mean_ms"`
}

// summarize uses nearest-rank percentiles over every successful call.
func (r *results) summarize() summary {
	r.mu.Lock()
	defer r.mu.Unlock()
	sorted := append([]time.Duration(nil), r.latencies...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
	quantile := func(q float64) time.Duration {
		if len(sorted) == 0 {
			return 0
		}
		rank := int(math.Ceil(q*float64(len(sorted)))) - 1
		return sorted[max(0, min(rank, len(sorted)-1))]
	}
	var longest, mean time.Duration
	if len(sorted) > 0 {
		var total time.Duration
		for _, l := range sorted {
			total += l
		}
		longest, mean = sorted[len(sorted)-1], total/time.Duration(len(sorted))
	}
	s := summary{
		Calls: r.calls, ErrorsByCode: map[string]int{},
		Latency: wire.Percentiles(quantile, longest), MeanMs: wire.Millis(mean),
	}
	for code, n := range r.errors {
		s.Errors += n
		s.ErrorsByCode[code] = n
	}
	return s
}

// ---------------------------------------------------------------- modes

type report struct {
	Bench string `json:"bench"`
	Mode  string `json:"mode"`
	Label string `json:"label,omitempty"`
	Pods  int    `json:"pods"`
	summary
	FirstMs   float64 `json:"first_ms"`
	DurationS float64 `json:"duration_s"`
	// steady only
	IntervalS      float64       `json:"interval_s,omitempty"`
	Rounds         int           `json:"rounds,omitempty"`
	TargetPerS     float64       `json:"target_per_s,omitempty"`
	AchievedPerS   float64       `json:"achieved_per_s,omitempty"`
	MaxInFlight    int64         `json:"max_in_flight,omitempty"`
	LateDispatches int           `json:"late_dispatches,omitempty"`
	PerRound       []roundReport `json:"per_round,omitempty"`
}

type roundReport struct {
	Round  int     `json:"round"`
	P50Ms  float64 `json:"p50_ms"`
	P99Ms  float64 `json:"p99_ms"`
	MaxMs  float64 `json:"max_ms"`
	Errors int     `json:"errors"`
}

// runSequential sends each request in order, one call at a time.
func runSequential(c *client, reqs [][]byte) (*results, time.Duration, time.Duration) {
	r := newResults(len(reqs))
	var first time.Duration
	start := time.Now()
	for i, req := range reqs {
		began := time.Now()
		code := c.mount(req)
		took := time.Since(began)
		if i == 0 {
			first = took
		}
		r.add(took, code)
	}
	return r, first, time.Since(start)
}

// lateSlack is how far behind its schedule the dispatcher may wake before a
// call counts as dispatched late (a sign the client, not the server, lagged).
const lateSlack = 5 * time.Millisecond

// runSteady remounts every pod once per interval. Pod i's call in round k is
// due at start + k*interval + i*interval/P. Latency counts from the due time
// when the dispatcher was behind (so queueing shows), else from when it woke
// (a timer's oversleep is not the server's).
func runSteady(c *client, reqs [][]byte, o options, rep *report) *results {
	pods := len(reqs)
	all := newResults(pods * o.rounds)
	perRound := make([]*results, o.rounds)
	for k := range perRound {
		perRound[k] = newResults(pods)
	}
	var inFlight, maxInFlight atomic.Int64
	var wg sync.WaitGroup
	late := 0
	start := time.Now()
	for k := 0; k < o.rounds; k++ {
		for i, req := range reqs {
			due := start.Add(time.Duration(k)*o.interval + time.Duration(float64(o.interval)*float64(i)/float64(pods)))
			began := due
			if now := time.Now(); now.Before(due) {
				time.Sleep(due.Sub(now))
				began = time.Now()
			} else if now.Sub(due) > lateSlack {
				late++
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				n := inFlight.Add(1)
				for {
					m := maxInFlight.Load()
					if n <= m || maxInFlight.CompareAndSwap(m, n) {
						break
					}
				}
				code := c.mount(req)
				took := time.Since(began)
				inFlight.Add(-1)
				all.add(took, code)
				perRound[k].add(took, code)
			}()
		}
	}
	wg.Wait()
	elapsed := time.Since(start)

	s := all.summarize()
	rep.DurationS = wire.Round(elapsed.Seconds(), 3)
	rep.IntervalS = o.interval.Seconds()
	rep.Rounds = o.rounds
	rep.TargetPerS = wire.Round(float64(pods)/o.interval.Seconds(), 1)
	rep.AchievedPerS = wire.Round(float64(s.Calls-s.Errors)/elapsed.Seconds(), 1)
	rep.MaxInFlight = maxInFlight.Load()
	rep.LateDispatches = late
	for k, r := range perRound {
		rs := r.summarize()
		rep.PerRound = append(rep.PerRound, roundReport{Round: k, P50Ms: rs.P50Ms, P99Ms: rs.P99Ms, MaxMs: rs.MaxMs, Errors: rs.Errors})
	}
	return all
}

// ---------------------------------------------------------------- setup

func readRequests(path string) [][]byte {
	reqs, err := wire.ReadMountRequests(path)
	if err != nil {
		fail("%v", err)
	}
	return reqs
}

func dial(socket string) *grpc.ClientConn {
	conn, err := wire.DialCSIProvider(socket)
	if err != nil {
		fail("%v", err)
	}
	return conn
}

// connect waits for the connection to be ready, so the first measured call
// does not pay for the dial.
func connect(conn *grpc.ClientConn) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn.Connect()
	for {
		state := conn.GetState()
		if state == connectivity.Ready {
			return
		}
		if !conn.WaitForStateChange(ctx, state) {
			fail("the connection to %s is not ready after 10 s (state %s)", conn.Target(), state)
		}
	}
}

func main() {
	o := parseFlags()
	reqs := readRequests(o.requests)
	conn := dial(o.socket)
	defer func() { _ = conn.Close() }()
	connect(conn)
	c := &client{conn: conn, timeout: o.timeout, expectFiles: o.expectFiles}

	rep := report{Bench: "csi", Mode: o.mode, Label: o.label, Pods: len(reqs)}
	var res *results
	switch o.mode {
	case "cold":
		var first, took time.Duration
		res, first, took = runSequential(c, reqs)
		rep.FirstMs, rep.DurationS = wire.Millis(first), wire.Round(took.Seconds(), 3)
	case "warm":
		if o.index >= len(reqs) {
			fail("-index %d is past the last request (%d requests)", o.index, len(reqs))
		}
		one := reqs[o.index]
		for range o.warmupCalls {
			if code := c.mount(one); code != "" {
				fail("warm-up call failed: %s", code)
			}
		}
		repeated := make([][]byte, o.repeat)
		for i := range repeated {
			repeated[i] = one
		}
		var first, took time.Duration
		res, first, took = runSequential(c, repeated)
		rep.Pods = 1
		rep.FirstMs, rep.DurationS = wire.Millis(first), wire.Round(took.Seconds(), 3)
	case "steady":
		res = runSteady(c, reqs, o, &rep)
	}
	rep.summary = res.summarize()

	wire.PrintReport(name, rep)
}
