// Command kms-hostile drives a KMS v2 plugin's socket with a steady legitimate
// load (Encrypt then Decrypt of the result, on one connection, as
// kube-apiserver does) while hostile workers send what a compromised or broken
// local client could: malformed and oversize messages, unknown methods, forged
// ciphertexts, garbage on raw connections, connection churn and idle
// connections. It prints one JSON line: the legitimate calls' latency and
// failures, and the hostile attempts by kind and by the answer they got.
//
//	kms-hostile -socket /run/kms.sock -duration 30s -legit-rate 200 -workers 8
package main

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"flag"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"

	"keyward.local/bench/load/wire"
)

const (
	name          = "kms-hostile"
	methodStatus  = "/v2.KeyManagementService/Status"
	methodEncrypt = "/v2.KeyManagementService/Encrypt"
	methodDecrypt = "/v2.KeyManagementService/Decrypt"
	// Over the plugin's 64 KiB request limit.
	oversizeBytes = 70 * 1024
	callTimeout   = 3 * time.Second // kube-apiserver's KMS default
)

type options struct {
	socket    string
	duration  time.Duration
	legitRate float64
	workers   int
	label     string
}

func parseFlags() options {
	var o options
	flag.StringVar(&o.socket, "socket", "", "path of the KMS plugin's unix socket (required)")
	flag.DurationVar(&o.duration, "duration", 20*time.Second, "how long the attack and the legitimate load last")
	flag.Float64Var(&o.legitRate, "legit-rate", 200, "legitimate Encrypt+Decrypt pairs per second")
	flag.IntVar(&o.workers, "workers", 8, "hostile workers, each cycling through every kind of attack")
	flag.StringVar(&o.label, "label", "", "free text copied into the output")
	flag.Parse()
	var problems []string
	if o.socket == "" {
		problems = append(problems, "-socket is required")
	}
	if o.duration <= 0 || o.legitRate <= 0 || o.workers < 0 {
		problems = append(problems, "-duration and -legit-rate must be positive, -workers not negative")
	}
	wire.RejectFlags(name, problems)
	return o
}

// ---------------------------------------------------------------- legitimate load

type legit struct {
	mu        sync.Mutex
	latencies []time.Duration
	calls     int
	failures  int
	first     string
}

func (l *legit) observe(d time.Duration, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls++
	if err != nil {
		l.failures++
		if l.first == "" {
			l.first = err.Error()
		}
		return
	}
	l.latencies = append(l.latencies, d)
}

func call(conn *grpc.ClientConn, method string, req []byte) ([]byte, time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	var resp []byte
	start := time.Now()
	err := conn.Invoke(ctx, method, &req, &resp)
	return resp, time.Since(start), err
}

// roundTrip encrypts a fresh secret, decrypts the answer as kube-apiserver
// would (its key_id and annotations passed back) and checks the plaintext.
func roundTrip(conn *grpc.ClientConn, l *legit, n int) {
	secret := make([]byte, 32)
	_, _ = crand.Read(secret)
	uid := fmt.Sprintf("legit-%d", n)
	resp, d, err := call(conn, methodEncrypt, wire.AppendStringField(wire.AppendBytesField(nil, 1, secret), 2, uid))
	l.observe(d, err)
	if err != nil {
		return
	}
	req := wire.AppendStringField(nil, 2, uid)
	if err := wire.WalkFields(resp, func(num protowire.Number, val []byte) {
		switch num {
		case 1:
			req = wire.AppendBytesField(req, 1, val)
		case 2:
			req = wire.AppendBytesField(req, 3, val)
		case 3: // an annotations entry goes back as the same map entry
			req = wire.AppendBytesField(req, 4, val)
		}
	}); err != nil {
		l.observe(0, fmt.Errorf("encrypt response does not parse: %v", err))
		return
	}
	resp, d, err = call(conn, methodDecrypt, req)
	if err == nil {
		var plaintext []byte
		_ = wire.WalkFields(resp, func(num protowire.Number, val []byte) {
			if num == 1 {
				plaintext = val
			}
		})
		if !bytes.Equal(plaintext, secret) {
			err = fmt.Errorf("decrypt returned another plaintext")
		}
	}
	l.observe(d, err)
}

// ---------------------------------------------------------------- hostile load

func outcomeOf(err error) string {
	if err == nil {
		return "OK"
	}
	return strings.ToUpper(snake(status.Code(err).String()))
}

// snake turns gRPC's code names (InvalidArgument) into the wire form
// (INVALID_ARGUMENT) the plugin's own metrics and audit use.
func snake(s string) string {
	var b strings.Builder
	for i, r := range s {
		if i > 0 && r >= 'A' && r <= 'Z' {
			b.WriteByte('_')
		}
		b.WriteRune(r)
	}
	return b.String()
}

func random(n int) []byte {
	b := make([]byte, n)
	_, _ = crand.Read(b)
	return b
}

type attack struct {
	kind string
	run  func(conn *grpc.ClientConn, target, socket string) string
}

var attacks = []attack{
	{"malformed_encrypt", func(c *grpc.ClientConn, _, _ string) string {
		_, _, err := call(c, methodEncrypt, random(1+int(random(1)[0])))
		return outcomeOf(err)
	}},
	{"oversize_encrypt", func(c *grpc.ClientConn, _, _ string) string {
		_, _, err := call(c, methodEncrypt, wire.AppendBytesField(nil, 1, random(oversizeBytes)))
		return outcomeOf(err)
	}},
	{"forged_decrypt", func(c *grpc.ClientConn, _, _ string) string {
		req := wire.AppendBytesField(wire.AppendStringField(wire.AppendBytesField(nil, 1, random(120)), 2, "forged"), 3, []byte("kw1-"+fmt.Sprintf("%x", random(16))))
		_, _, err := call(c, methodDecrypt, req)
		return outcomeOf(err)
	}},
	{"unknown_method", func(c *grpc.ClientConn, _, _ string) string {
		_, _, err := call(c, "/v2.KeyManagementService/Export", nil)
		return outcomeOf(err)
	}},
	{"garbage_connection", func(_ *grpc.ClientConn, _, socket string) string {
		return rawConnection(socket, random(4096), 0)
	}},
	{"idle_connection", func(_ *grpc.ClientConn, _, socket string) string {
		return rawConnection(socket, []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), time.Second)
	}},
	{"connection_churn", func(_ *grpc.ClientConn, target, _ string) string {
		conn, err := wire.NewClient(target)
		if err != nil {
			return "client_error"
		}
		defer conn.Close()
		_, _, err = call(conn, methodStatus, nil)
		return outcomeOf(err)
	}},
}

// rawConnection writes payload on a plain unix connection, stays up to hold,
// and reports whether the plugin closed it or we did.
func rawConnection(socket string, payload []byte, hold time.Duration) string {
	conn, err := net.Dial("unix", socket)
	if err != nil {
		return "connect_refused"
	}
	defer conn.Close()
	_, _ = conn.Write(payload)
	_ = conn.SetReadDeadline(time.Now().Add(hold + time.Second))
	buf := make([]byte, 4096)
	for {
		if _, err := conn.Read(buf); err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				return "held_open"
			}
			return "closed_by_plugin"
		}
	}
}

// ---------------------------------------------------------------- report

type report struct {
	Bench         string                    `json:"bench"`
	Label         string                    `json:"label"`
	DurationS     float64                   `json:"duration_s"`
	LegitCalls    int                       `json:"legit_calls"`
	LegitFailures int                       `json:"legit_failures"`
	LegitFirst    string                    `json:"legit_first_failure,omitempty"`
	Legit         wire.Latency              `json:"legit"`
	HostileTotal  int                       `json:"hostile_attempts"`
	Hostile       map[string]map[string]int `json:"hostile"`
}

func main() {
	o := parseFlags()
	target, err := wire.UnixTarget(o.socket)
	if err != nil {
		wire.Fail(name, "%v", err)
	}
	apiserver, err := wire.NewClient(target)
	if err != nil {
		wire.Fail(name, "%v", err)
	}
	defer apiserver.Close()
	if _, _, err := call(apiserver, methodStatus, nil); err != nil {
		wire.Fail(name, "initial Status call failed: %v", err)
	}

	end := time.Now().Add(o.duration)
	var wg sync.WaitGroup
	l := &legit{}
	t := wire.NewOutcomes()
	wg.Add(1)
	go func() {
		defer wg.Done()
		wire.Paced(o.legitRate, end, func(n int) { roundTrip(apiserver, l, n) })
	}()
	for w := 0; w < o.workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			// Each worker has its own connection, as separate hostile clients would.
			conn, err := wire.NewClient(target)
			if err != nil {
				t.Add("worker", "client_error")
				return
			}
			defer conn.Close()
			for i := w; time.Now().Before(end); i++ {
				a := attacks[i%len(attacks)]
				t.Add(a.kind, a.run(conn, target, o.socket))
			}
		}(w)
	}
	wg.Wait()

	hostile, total := t.Report()
	wire.PrintReport(name, report{
		Bench:         "kms-hostile",
		Label:         o.label,
		DurationS:     o.duration.Seconds(),
		LegitCalls:    l.calls,
		LegitFailures: l.failures,
		LegitFirst:    l.first,
		Legit:         wire.LatencyOf(l.latencies),
		HostileTotal:  total,
		Hostile:       hostile,
	})
}
