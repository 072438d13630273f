// Command kms-load is a lean load generator for a Kubernetes KMS v2 plugin
// (gRPC over a unix socket). It prints one JSON line with throughput and
// latency percentiles.
//
// It avoids protoc: messages are encoded by hand with protowire and a codec
// passes raw bytes through gRPC, so the client costs little CPU per call.
//
// Build with build.sh (next to this file), then for example:
//
//	kms-load -socket /run/kms.sock -method decrypt -rate 1000 -duration 30s -label hsm
package main

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"math/bits"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
)

const (
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
	if len(bad) > 0 {
		for _, b := range bad {
			fmt.Fprintln(os.Stderr, "kms-load:", b)
		}
		flag.Usage()
		os.Exit(2)
	}
	return o
}

// ---------------------------------------------------------------- codec

// rawCodec sends and receives *[]byte as the message bytes. It is named
// "proto" so the content-type stays application/grpc+proto, which every
// server accepts.
type rawCodec struct{}

func (rawCodec) Name() string { return "proto" }

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	b, ok := v.(*[]byte)
	if !ok {
		return nil, fmt.Errorf("rawCodec: cannot marshal %T", v)
	}
	return mem.BufferSlice{mem.SliceBuffer(*b)}, nil
}

// Unmarshal copies into the caller's slice, reusing its capacity: gRPC frees
// data once we return.
func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	b, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("rawCodec: cannot unmarshal into %T", v)
	}
	out := (*b)[:0]
	for _, buf := range data {
		out = append(out, buf.ReadOnlyData()...)
	}
	*b = out
	return nil
}

// ---------------------------------------------------------------- wire format

func appendBytesField(b []byte, num protowire.Number, v []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}

// walkFields calls fn for each length-delimited field of msg and skips the
// others. The value slices alias msg.
func walkFields(msg []byte, fn func(num protowire.Number, val []byte)) error {
	for len(msg) > 0 {
		num, typ, n := protowire.ConsumeTag(msg)
		if n < 0 {
			return protowire.ParseError(n)
		}
		msg = msg[n:]
		if typ == protowire.BytesType {
			val, m := protowire.ConsumeBytes(msg)
			if m < 0 {
				return protowire.ParseError(m)
			}
			fn(num, val)
			msg = msg[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, msg)
		if m < 0 {
			return protowire.ParseError(m)
		}
		msg = msg[m:]
	}
	return nil
}

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
	err := walkFields(resp, func(num protowire.Number, val []byte) {
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
	err := walkFields(entry, func(num protowire.Number, v []byte) {
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
		entry = appendBytesField(entry, 1, []byte(k))
		entry = appendBytesField(entry, 2, m[k])
		b = appendBytesField(b, num, entry)
	}
	return b
}

func parseDecrypt(resp []byte) (plaintext []byte, err error) {
	err = walkFields(resp, func(num protowire.Number, val []byte) {
		if num == 1 {
			plaintext = val
		}
	})
	return plaintext, err
}

func checkStatus(resp []byte) error {
	var healthz, keyID []byte
	err := walkFields(resp, func(num protowire.Number, val []byte) {
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

// quantileNs returns the q-quantile (0..1), never above the exact maximum.
func (h *histogram) quantileNs(q float64) float64 {
	if h.total == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.total)))
	rank = max(rank, 1)
	var seen uint64
	for i, c := range h.counts {
		seen += uint64(c)
		if seen >= rank {
			return math.Min(bucketMid(i), float64(h.max))
		}
	}
	return float64(h.max)
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
	w.req = appendBytesField(w.req[:0], 1, w.plaintext)
	w.req = appendBytesField(w.req, 2, w.nextUID())
	if err := w.invoke(ctx, methodEncrypt); err != nil {
		return err
	}
	_, err := parseEncrypt(w.resp, false)
	return err
}

func (w *worker) decrypt(ctx context.Context) error {
	s := &w.samples[w.calls%uint64(len(w.samples))]
	w.req = append(w.req[:0], s.head...)
	w.req = appendBytesField(w.req, 2, w.nextUID())
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

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "kms-load: "+format+"\n", args...)
	os.Exit(1)
}

func dial(o options) []*grpc.ClientConn {
	path, err := filepath.Abs(o.socket)
	if err != nil {
		fail("socket path %q: %v", o.socket, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		fail("cannot connect: socket %s: %v", path, err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		fail("cannot connect: %s is not a unix socket", path)
	}
	conns := make([]*grpc.ClientConn, o.conns)
	for i := range conns {
		conns[i], err = grpc.NewClient("unix://"+path,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.ForceCodecV2(rawCodec{})))
		if err != nil {
			fail("cannot create a gRPC client for unix://%s: %v", path, err)
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
		w.req = appendBytesField(nil, 1, w.plaintext)
		w.req = appendBytesField(w.req, 2, w.nextUID())
		if err := w.invoke(ctx, methodEncrypt); err != nil {
			fail("initial Encrypt call failed: %v", err)
		}
		r, err := parseEncrypt(w.resp, true)
		if err != nil {
			fail("initial Encrypt returned a bad response: %v", err)
		}
		samples[i] = decryptSample{
			head:      appendBytesField(nil, 1, r.ciphertext),
			tail:      appendAnnotations(appendBytesField(nil, 3, r.keyID), 4, r.annotations),
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
	P50Ms       float64 `json:"p50_ms"`
	P90Ms       float64 `json:"p90_ms"`
	P99Ms       float64 `json:"p99_ms"`
	MaxMs       float64 `json:"max_ms"`
	FirstError  string  `json:"first_error,omitempty"`
}

func round(v float64, places int) float64 {
	p := math.Pow10(places)
	return math.Round(v*p) / p
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
	ms := func(ns float64) float64 { return round(ns/1e6, 3) }
	r := report{
		Bench: "kms", Label: o.label, Method: o.method,
		Concurrency: o.concurrency, Rate: o.rate,
		DurationS: o.duration.Seconds(),
		Calls:     h.total + errs, Errors: errs,
		OpsPerS: round(float64(h.total)/o.duration.Seconds(), 1), // successes only
		P50Ms:   ms(h.quantileNs(0.50)),
		P90Ms:   ms(h.quantileNs(0.90)),
		P99Ms:   ms(h.quantileNs(0.99)),
		MaxMs:   ms(float64(h.max)),
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

	out, err := json.Marshal(summarize(o, workers))
	if err != nil {
		fail("encoding the report: %v", err)
	}
	fmt.Println(string(out))
	for _, c := range conns {
		_ = c.Close()
	}
}
