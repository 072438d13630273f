// Command kms-load is a lean load generator for a Kubernetes KMS v2 plugin
// (gRPC over a unix socket). It prints one JSON line with throughput and
// latency percentiles.
//
// It avoids protoc: messages are encoded by hand with protowire and a codec
// passes raw bytes through gRPC, so the client costs little CPU per call.
//
// Build with bench/buildGoClient.sh kms-load, then for example:
//
//	kms-load -socket /run/kms.sock -method decrypt -rate 1000 -duration 30s -label hsm
package main

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"math"
	"math/bits"
	"math/rand/v2"
	"sort"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protowire"

	"keyward.local/bench/load/wire"
)

const (
	name = "kms-load" // prefixes error messages

	methodStatus  = "/v2.KeyManagementService/Status"
	methodEncrypt = "/v2.KeyManagementService/Encrypt"
	methodDecrypt = "/v2.KeyManagementService/Decrypt"

	decryptSamples = 16               // distinct ciphertexts cycled by decrypt runs
	setupTimeout   = 10 * time.Second // for the probe and sample encrypts
)

// ---------------------------------------------------------------- options

type options struct {
	socket        string
	method        string
	concurrency   int
	conns         int
	duration      time.Duration
	warmup        time.Duration
	rate          float64
	plaintextSize int
	timeout       time.Duration
	label         string
}

func parseFlags() options {
	var o options
	flag.StringVar(&o.socket, "socket", "", "path of the KMS plugin's unix socket (required)")
	flag.StringVar(&o.method, "method", "encrypt", "encrypt | decrypt | status")
	flag.IntVar(&o.concurrency, "concurrency", 16, "number of workers (calls in flight at most)")
	flag.IntVar(&o.conns, "conns", 1, "number of gRPC connections (kube-apiserver uses 1)")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "measured duration")
	flag.DurationVar(&o.warmup, "warmup", time.Second, "unmeasured warm-up before the measured duration")
	flag.Float64Var(&o.rate, "rate", 0, "total calls/s on a fixed open-loop schedule; 0 = as fast as possible")
	flag.IntVar(&o.plaintextSize, "plaintext-size", 32, "plaintext bytes per encrypt (kube-apiserver sends a 32-byte DEK)")
	flag.DurationVar(&o.timeout, "timeout", 3*time.Second, "per-call timeout (kube-apiserver's KMS default is 3s); 0 = none")
	flag.StringVar(&o.label, "label", "", "free text copied into the output")
	flag.Parse()

	var bad []string
	if o.socket == "" {
		bad = append(bad, "-socket is required")
	}
	if o.method != "encrypt" && o.method != "decrypt" && o.method != "status" {
		bad = append(bad, "-method must be encrypt, decrypt or status")
	}
	if o.concurrency < 1 || o.conns < 1 {
		bad = append(bad, "-concurrency and -conns must be >= 1")
	}
	if o.duration <= 0 || o.warmup < 0 || o.timeout < 0 {
		bad = append(bad, "-duration must be > 0; -warmup and -timeout >= 0")
	}
	if o.rate < 0 || math.IsNaN(o.rate) || math.IsInf(o.rate, 0) {
		bad = append(bad, "-rate must be a finite number >= 0")
	}
	if o.plaintextSize < 1 {
		bad = append(bad, "-plaintext-size must be >= 1")
	}
	wire.RejectFlags(name, bad)
	return o
}

// ---------------------------------------------------------------- messages

var (
	errEmptyKeyID       = errors.New("response has an empty key_id")
	errEmptyCiphertext  = errors.New("encrypt response has an empty ciphertext")
	errPlaintextDiffers = errors.New("decrypt returned a plaintext different from the one encrypted")
	errUnhealthy        = errors.New("status healthz is not \"ok\"")
)

// encryptResult is an EncryptResponse; its slices alias the response bytes.
type encryptResult struct {
	ciphertext  []byte
	keyID       []byte
	annotations map[string][]byte // only filled when wanted, see parseEncrypt
}

func parseEncrypt(resp []byte, withAnnotations bool) (encryptResult, error) {
	var r encryptResult
	var mapErr error
	err := wire.WalkFields(resp, func(num protowire.Number, val []byte) {
		switch num {
		case 1:
			r.ciphertext = val
		case 2:
			r.keyID = val
		case 3:
			if withAnnotations {
				mapErr = errors.Join(mapErr, addMapEntry(&r.annotations, val))
			}
		}
	})
	if err = errors.Join(err, mapErr); err != nil {
		return r, err
	}
	if len(r.keyID) == 0 {
		return r, errEmptyKeyID
	}
	if len(r.ciphertext) == 0 {
		return r, errEmptyCiphertext
	}
	return r, nil
}

// addMapEntry decodes one map<string,bytes> entry (key=1, value=2).
func addMapEntry(m *map[string][]byte, entry []byte) error {
	var key string
	var val []byte
	err := wire.WalkFields(entry, func(num protowire.Number, v []byte) {
		switch num {
		case 1:
			key = string(v)
		case 2:
			val = bytes.Clone(v)
		}
	})
	if *m == nil {
		*m = map[string][]byte{}
	}
	(*m)[key] = val
	return err
}

// appendAnnotations encodes a map field with sorted keys, so requests are
// byte-for-byte repeatable.
func appendAnnotations(b []byte, num protowire.Number, m map[string][]byte) []byte {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		var entry []byte
		entry = wire.AppendBytesField(entry, 1, []byte(k))
		entry = wire.AppendBytesField(entry, 2, m[k])
		b = wire.AppendBytesField(b, num, entry)
	}
	return b
}

func parseDecrypt(resp []byte) (plaintext []byte, err error) {
	err = wire.WalkFields(resp, func(num protowire.Number, val []byte) {
		if num == 1 {
			plaintext = val
		}
	})
	return plaintext, err
}

func checkStatus(resp []byte) error {
	var healthz, keyID []byte
	err := wire.WalkFields(resp, func(num protowire.Number, val []byte) {
		switch num {
		case 2:
			healthz = val
		case 3:
			keyID = val
		}
	})
	switch {
	case err != nil:
		return err
	case string(healthz) != "ok":
		return errUnhealthy
	case len(keyID) == 0:
		return errEmptyKeyID
	}
	return nil
}

// ---------------------------------------------------------------- histogram

// histogram is a log-linear histogram of nanoseconds: values below 256 are
// exact, above that each power of two is split into 128 buckets, so a bucket
// is at most 1/128 of its value wide (reported as its midpoint: <0.4% error).
const (
	subBits    = 7
	subBuckets = 1 << subBits
	maxShift   = 30 // values are clamped below 2^38 ns (~275 s)
	numBuckets = (maxShift + 2) * subBuckets
)

type histogram struct {
	counts [numBuckets]uint32
	total  uint64
	max    int64
}

func bucketOf(ns int64) int {
	if ns < 0 {
		ns = 0
	}
	v := uint64(ns)
	shift := bits.Len64(v) - (subBits + 1)
	if shift <= 0 {
		return int(v)
	}
	if shift > maxShift {
		return numBuckets - 1
	}
	return shift*subBuckets + int(v>>uint(shift))
}

// bucketMid is the midpoint of bucket i in nanoseconds.
func bucketMid(i int) float64 {
	if i < 2*subBuckets {
		return float64(i)
	}
	shift := i/subBuckets - 1
	low := uint64(i%subBuckets+subBuckets) << uint(shift)
	return float64(low) + float64(uint64(1)<<uint(shift))/2
}

func (h *histogram) record(d time.Duration) {
	h.counts[bucketOf(int64(d))]++
	h.total++
	if int64(d) > h.max {
		h.max = int64(d)
	}
}

func (h *histogram) merge(o *histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.total += o.total
	h.max = max(h.max, o.max)
}

// quantile returns the q-quantile (0..1), never above the exact maximum.
// Bucket midpoints are whole nanoseconds, so the conversion loses nothing.
func (h *histogram) quantile(q float64) time.Duration {
	if h.total == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.total)))
	rank = max(rank, 1)
	var seen uint64
	for i, c := range h.counts {
		seen += uint64(c)
		if seen >= rank {
			return time.Duration(math.Min(bucketMid(i), float64(h.max)))
		}
	}
	return time.Duration(h.max)
}

// ---------------------------------------------------------------- calls

// decryptSample is one ciphertext to decrypt and the plaintext it must yield.
type decryptSample struct {
	head      []byte // field 1 (ciphertext), encoded
	tail      []byte // fields 3 and 4 (key_id, annotations), encoded
	plaintext []byte
}

// worker owns every buffer one goroutine needs, so the hot loop allocates
// nothing of its own.
type worker struct {
	conn      *grpc.ClientConn
	method    string
	timeout   time.Duration
	rng       *rand.ChaCha8
	plaintext []byte
	uid       []byte // uidPrefix, then the call counter appended per call
	uidPrefix int
	calls     uint64
	req       []byte
	resp      []byte
	samples   []decryptSample

	hist     histogram
	errors   uint64
	firstErr error
	firstAt  time.Time
}

func newWorker(id int, runID string, conn *grpc.ClientConn, o options, samples []decryptSample) *worker {
	var seed [32]byte
	_, _ = crand.Read(seed[:])
	w := &worker{
		conn:      conn,
		method:    o.method,
		timeout:   o.timeout,
		rng:       rand.NewChaCha8(seed),
		plaintext: make([]byte, o.plaintextSize),
		samples:   samples,
	}
	w.uid = fmt.Appendf(nil, "kms-load-%s-%d-", runID, id)
	w.uidPrefix = len(w.uid)
	return w
}

func (w *worker) nextUID() []byte {
	w.calls++
	w.uid = strconv.AppendUint(w.uid[:w.uidPrefix], w.calls, 10)
	return w.uid
}

func (w *worker) invoke(ctx context.Context, method string) error {
	if w.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, w.timeout)
		defer cancel()
	}
	err := w.conn.Invoke(ctx, method, &w.req, &w.resp)
	if err != nil {
		// A failed call may leave the request queued in the transport; never
		// overwrite bytes it might still read.
		w.req = nil
	}
	return err
}

func (w *worker) call(ctx context.Context) error {
	switch w.method {
	case "encrypt":
		return w.encrypt(ctx)
	case "decrypt":
		return w.decrypt(ctx)
	default:
		return w.status(ctx)
	}
}

func (w *worker) encrypt(ctx context.Context) error {
	_, _ = w.rng.Read(w.plaintext)
	w.req = wire.AppendBytesField(w.req[:0], 1, w.plaintext)
	w.req = wire.AppendBytesField(w.req, 2, w.nextUID())
	if err := w.invoke(ctx, methodEncrypt); err != nil {
		return err
	}
	_, err := parseEncrypt(w.resp, false)
	return err
}

func (w *worker) decrypt(ctx context.Context) error {
	s := &w.samples[w.calls%uint64(len(w.samples))]
	w.req = append(w.req[:0], s.head...)
	w.req = wire.AppendBytesField(w.req, 2, w.nextUID())
	w.req = append(w.req, s.tail...)
	if err := w.invoke(ctx, methodDecrypt); err != nil {
		return err
	}
	got, err := parseDecrypt(w.resp)
	if err == nil && !bytes.Equal(got, s.plaintext) {
		err = errPlaintextDiffers
	}
	return err
}

func (w *worker) status(ctx context.Context) error {
	w.req = w.req[:0]
	if err := w.invoke(ctx, methodStatus); err != nil {
		return err
	}
	return checkStatus(w.resp)
}

// observe records a measured call. Only successes go into the histogram:
// failures often return in microseconds and would flatter the percentiles.
func (w *worker) observe(latency time.Duration, err error) {
	if err == nil {
		w.hist.record(latency)
		return
	}
	w.errors++
	if w.firstErr == nil {
		w.firstErr, w.firstAt = err, time.Now()
	}
}

// ---------------------------------------------------------------- run loops

// window is the run's timeline: calls starting before measureFrom are warm-up,
// none start at or after end.
type window struct {
	start, measureFrom, end time.Time
}

// runClosed issues calls back to back; latency is each call's own time.
func (w *worker) runClosed(ctx context.Context, win window) {
	for {
		began := time.Now()
		if !began.Before(win.end) {
			return
		}
		err := w.call(ctx)
		if !began.Before(win.measureFrom) {
			w.observe(time.Since(began), err)
		}
	}
}

// runPaced takes slots id, id+n, id+2n, ... of a fixed schedule of `rate`
// calls/s. A worker still busy when its slot is due starts late, and latency
// counts from the scheduled time, so a server that falls behind shows
// queueing instead of silently lowering the rate. A worker that slept counts
// from when it woke: the timer's oversleep (~0.1-1 ms) is not the server's.
func (w *worker) runPaced(ctx context.Context, win window, id, n int, rate float64) {
	nsPerCall := 1e9 / rate
	for slot := int64(id); ; slot += int64(n) {
		due := win.start.Add(time.Duration(float64(slot) * nsPerCall))
		now := time.Now()
		// A backlog left at the end is dropped, not drained: the run stays
		// bounded and ops_per_s shows the rate the server actually reached.
		if !due.Before(win.end) || !now.Before(win.end) {
			return
		}
		began := due
		if now.Before(due) {
			time.Sleep(due.Sub(now))
			now = time.Now()
			began = now
		}
		err := w.call(ctx)
		// Like runClosed, a call is measured if it starts in the window, so
		// a warm-up backlog served later counts towards ops_per_s.
		if !now.Before(win.measureFrom) {
			w.observe(time.Since(began), err)
		}
	}
}

// ---------------------------------------------------------------- setup

func fail(format string, args ...any) { wire.Fail(name, format, args...) }

func dial(o options) []*grpc.ClientConn {
	target, err := wire.UnixTarget(o.socket)
	if err != nil {
		fail("%v", err)
	}
	conns := make([]*grpc.ClientConn, o.conns)
	for i := range conns {
		if conns[i], err = wire.NewClient(target); err != nil {
			fail("%v", err)
		}
	}
	return conns
}

// probe makes one call on every connection, so an unreachable or broken
// plugin fails the run up front with a clear message.
func probe(conns []*grpc.ClientConn, o options, runID string) {
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	for i, c := range conns {
		w := newWorker(-1-i, runID, c, o, nil)
		w.timeout = 0
		if o.method == "status" {
			if err := w.status(ctx); err != nil {
				fail("initial Status call on %s failed: %v", c.Target(), err)
			}
			continue
		}
		if err := w.encrypt(ctx); err != nil {
			fail("initial Encrypt call on %s failed: %v", c.Target(), err)
		}
	}
}

// makeDecryptSamples encrypts distinct random plaintexts and keeps what a
// Decrypt request needs, pre-encoded.
func makeDecryptSamples(conns []*grpc.ClientConn, o options, runID string) []decryptSample {
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	samples := make([]decryptSample, decryptSamples)
	for i := range samples {
		w := newWorker(-100-i, runID, conns[i%len(conns)], o, nil)
		w.timeout = 0
		_, _ = w.rng.Read(w.plaintext)
		w.req = wire.AppendBytesField(nil, 1, w.plaintext)
		w.req = wire.AppendBytesField(w.req, 2, w.nextUID())
		if err := w.invoke(ctx, methodEncrypt); err != nil {
			fail("initial Encrypt call failed: %v", err)
		}
		r, err := parseEncrypt(w.resp, true)
		if err != nil {
			fail("initial Encrypt returned a bad response: %v", err)
		}
		samples[i] = decryptSample{
			head:      wire.AppendBytesField(nil, 1, r.ciphertext),
			tail:      appendAnnotations(wire.AppendBytesField(nil, 3, r.keyID), 4, r.annotations),
			plaintext: bytes.Clone(w.plaintext),
		}
	}
	return samples
}

func newRunID() string {
	var b [4]byte
	_, _ = crand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// ---------------------------------------------------------------- report

// report is the one JSON line printed. calls counts every measured call,
// errors the failed ones; ops_per_s and the latencies cover successes only.
type report struct {
	Bench       string  `json:"bench"`
	Label       string  `json:"label"`
	Method      string  `json:"method"`
	Concurrency int     `json:"concurrency"`
	Rate        float64 `json:"rate"`
	DurationS   float64 `json:"duration_s"`
	Calls       uint64  `json:"calls"`
	Errors      uint64  `json:"errors"`
	OpsPerS     float64 `json:"ops_per_s"`
	wire.Latency
	FirstError string `json:"first_error,omitempty"`
}

func summarize(o options, workers []*worker) report {
	var h histogram
	var errs uint64
	var first error
	var firstAt time.Time
	for _, w := range workers {
		h.merge(&w.hist)
		errs += w.errors
		if w.firstErr != nil && (first == nil || w.firstAt.Before(firstAt)) {
			first, firstAt = w.firstErr, w.firstAt
		}
	}
	r := report{
		Bench: "kms", Label: o.label, Method: o.method,
		Concurrency: o.concurrency, Rate: o.rate,
		DurationS: o.duration.Seconds(),
		Calls:     h.total + errs, Errors: errs,
		OpsPerS: wire.Round(float64(h.total)/o.duration.Seconds(), 1), // successes only
		Latency: wire.Percentiles(h.quantile, time.Duration(h.max)),
	}
	if first != nil {
		r.FirstError = first.Error()
	}
	return r
}

// ---------------------------------------------------------------- main

func main() {
	o := parseFlags()
	runID := newRunID()
	conns := dial(o)
	probe(conns, o, runID)
	var samples []decryptSample
	if o.method == "decrypt" {
		samples = makeDecryptSamples(conns, o, runID)
	}

	workers := make([]*worker, o.concurrency)
	for i := range workers {
		workers[i] = newWorker(i, runID, conns[i%len(conns)], o, samples)
	}

	start := time.Now()
	win := window{start: start, measureFrom: start.Add(o.warmup), end: start.Add(o.warmup + o.duration)}
	ctx := context.Background()
	var wg sync.WaitGroup
	for i, w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if o.rate > 0 {
				w.runPaced(ctx, win, i, len(workers), o.rate)
			} else {
				w.runClosed(ctx, win)
			}
		}()
	}
	wg.Wait()

	wire.PrintReport(name, summarize(o, workers))
	for _, c := range conns {
		_ = c.Close()
	}
}
