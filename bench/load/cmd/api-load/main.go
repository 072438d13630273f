// Command api-load is a lean client for a real kube-apiserver, for the
// retirement benchmark. It has two modes:
//
//   - create: creates Secrets ns/prefix-N, N in [start, start+count), with
//     `concurrency` requests in flight on one HTTP/2 connection (as client-go
//     does); an AlreadyExists counts as created, so a run can be resumed. It
//     prints one JSON line with the count, the time and the latency.
//   - probe: a steady prober of unrelated requests, a GET of one object and a
//     small LIST, each at a fixed rate and started on a fixed schedule (a slow
//     answer does not delay the next request), until SIGTERM or -duration. It
//     prints one line per answer, "s <unix ms sent> <kind> <latency µs>
//     <HTTP status>", so the bench cuts them into its own time windows, and a
//     JSON summary line when it stops.
//
// Build with bench/buildGoClient.sh api-load, then for example:
//
//	api-load -mode create -server https://127.0.0.1:6443 -ca ca.crt -cert admin.crt -key admin.key -namespace default -prefix s -count 10000
//	api-load -mode probe ... -get-path /api/v1/namespaces/p/configmaps/unrelated -list-path '/api/v1/namespaces/p/configmaps?limit=10'
package main

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"keyward.local/bench/load/wire"
)

const name = "api-load" // prefixes error messages

type options struct {
	mode        string
	server      string
	ca          string
	cert        string
	key         string
	timeout     time.Duration
	namespace   string
	prefix      string
	start       int
	count       int
	concurrency int
	valueBytes  int
	getPath     string
	listPath    string
	getRate     float64
	listRate    float64
	duration    time.Duration
}

func parseFlags() options {
	var o options
	flag.StringVar(&o.mode, "mode", "", "create or probe")
	flag.StringVar(&o.server, "server", "", "the apiserver's URL, https://host:port")
	flag.StringVar(&o.ca, "ca", "", "the apiserver's CA certificate (PEM file)")
	flag.StringVar(&o.cert, "cert", "", "the client certificate (PEM file)")
	flag.StringVar(&o.key, "key", "", "the client key (PEM file)")
	flag.DurationVar(&o.timeout, "timeout", 30*time.Second, "per request")
	flag.StringVar(&o.namespace, "namespace", "default", "create: the Secrets' namespace")
	flag.StringVar(&o.prefix, "prefix", "s", "create: Secret names are prefix-N")
	flag.IntVar(&o.start, "start", 0, "create: the first N")
	flag.IntVar(&o.count, "count", 0, "create: how many Secrets")
	flag.IntVar(&o.concurrency, "concurrency", 32, "create: requests in flight")
	flag.IntVar(&o.valueBytes, "value-bytes", 256, "create: random bytes in each Secret's value")
	flag.StringVar(&o.getPath, "get-path", "", "probe: the object to GET")
	flag.StringVar(&o.listPath, "list-path", "", "probe: the small LIST")
	flag.Float64Var(&o.getRate, "get-rate", 20, "probe: GETs per second")
	flag.Float64Var(&o.listRate, "list-rate", 5, "probe: LISTs per second (0: none)")
	flag.DurationVar(&o.duration, "duration", 0, "probe: stop after this long (0: at SIGTERM)")
	flag.Parse()

	var problems []string
	if o.server == "" || o.ca == "" || o.cert == "" || o.key == "" {
		problems = append(problems, "-server, -ca, -cert and -key are required")
	}
	switch o.mode {
	case "create":
		if o.count < 1 || o.start < 0 {
			problems = append(problems, "-count must be 1 or more and -start 0 or more")
		}
		if o.concurrency < 1 || o.concurrency > 1000 {
			problems = append(problems, "-concurrency must be 1 to 1000")
		}
		if o.valueBytes < 1 || o.valueBytes > 512*1024 {
			problems = append(problems, "-value-bytes must be 1 to 524288")
		}
	case "probe":
		if o.getPath == "" || !(o.getRate > 0 && o.getRate <= 1000) {
			problems = append(problems, "-get-path is required and -get-rate must be above 0 and at most 1000")
		}
		if o.listRate < 0 || o.listRate > 1000 || (o.listRate > 0 && o.listPath == "") {
			problems = append(problems, "-list-rate must be 0 to 1000, and -list-path is required when it is above 0")
		}
	default:
		problems = append(problems, "-mode must be create or probe")
	}
	wire.RejectFlags(name, problems)
	return o
}

func newClient(o options) *http.Client {
	caPEM, err := os.ReadFile(o.ca)
	if err != nil {
		wire.Fail(name, "reading -ca: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		wire.Fail(name, "-ca %s holds no PEM certificate", o.ca)
	}
	pair, err := tls.LoadX509KeyPair(o.cert, o.key)
	if err != nil {
		wire.Fail(name, "loading -cert and -key: %v", err)
	}
	transport := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 8,
		IdleConnTimeout:     90 * time.Second,
	}
	return &http.Client{Transport: transport, Timeout: o.timeout}
}

// do sends one request and reads the answer whole; it returns the status
// (0 when there was no answer) and the body's start for error messages.
func do(client *http.Client, method, url string, body []byte) (int, string) {
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		return 0, err.Error()
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := client.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer res.Body.Close()
	head, _ := io.ReadAll(io.LimitReader(res.Body, 512))
	_, _ = io.Copy(io.Discard, res.Body)
	return res.StatusCode, string(head)
}

// ---------------------------------------------------------------- create

type createReport struct {
	Mode        string       `json:"mode"`
	Created     int          `json:"created"`
	Existed     int          `json:"existed"`
	Retries     int64        `json:"retries"`
	Seconds     float64      `json:"seconds"`
	PerSecond   float64      `json:"per_s"`
	Concurrency int          `json:"concurrency"`
	Latency     wire.Latency `json:"latency"`
}

func runCreate(o options, client *http.Client) {
	url := fmt.Sprintf("%s/api/v1/namespaces/%s/secrets", strings.TrimRight(o.server, "/"), o.namespace)
	var next, existed atomic.Int64
	var retries atomic.Int64
	next.Store(int64(o.start))
	end := int64(o.start + o.count)
	latencies := make([][]time.Duration, o.concurrency)
	errs := make(chan error, o.concurrency)
	var wg sync.WaitGroup
	started := time.Now()
	for w := 0; w < o.concurrency; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			value := make([]byte, o.valueBytes)
			for {
				n := next.Add(1) - 1
				if n >= end {
					return
				}
				_, _ = crand.Read(value)
				body, _ := json.Marshal(map[string]any{
					"apiVersion": "v1",
					"kind":       "Secret",
					"metadata":   map[string]any{"name": fmt.Sprintf("%s-%d", o.prefix, n), "labels": map[string]string{"bench": "retire"}},
					"data":       map[string]string{"value": base64.StdEncoding.EncodeToString(value)},
				})
				// 429 and 5xx (an apiserver busy or its KMS plugin slow) are tried
				// again; anything else is a bench failure.
				for attempt := 0; ; attempt++ {
					t0 := time.Now()
					status, text := do(client, http.MethodPost, url, body)
					if status == http.StatusCreated || status == http.StatusOK {
						latencies[w] = append(latencies[w], time.Since(t0))
						break
					}
					if status == http.StatusConflict {
						existed.Add(1)
						break
					}
					if (status == 0 || status == 429 || status >= 500) && attempt < 20 {
						retries.Add(1)
						time.Sleep(time.Duration(100*(attempt+1)) * time.Millisecond)
						continue
					}
					errs <- fmt.Errorf("creating %s-%d: HTTP %d: %s", o.prefix, n, status, text)
					next.Store(end) // stops the other workers
					return
				}
			}
		}(w)
	}
	wg.Wait()
	elapsed := time.Since(started)
	select {
	case err := <-errs:
		wire.Fail(name, "%v", err)
	default:
	}
	var all []time.Duration
	for _, l := range latencies {
		all = append(all, l...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	quantile := func(q float64) time.Duration {
		if len(all) == 0 {
			return 0
		}
		i := int(q*float64(len(all))+0.999999) - 1
		return all[max(0, min(len(all)-1, i))]
	}
	longest := time.Duration(0)
	if len(all) > 0 {
		longest = all[len(all)-1]
	}
	wire.PrintReport(name, createReport{
		Mode:        "create",
		Created:     len(all),
		Existed:     int(existed.Load()),
		Retries:     retries.Load(),
		Seconds:     wire.Round(elapsed.Seconds(), 3),
		PerSecond:   wire.Round(float64(o.count)/elapsed.Seconds(), 1),
		Concurrency: o.concurrency,
		Latency:     wire.Percentiles(quantile, longest),
	})
}

// ---------------------------------------------------------------- probe

type probeReport struct {
	Mode   string         `json:"mode"`
	Sent   map[string]int `json:"sent"`
	Failed map[string]int `json:"failed"`
}

func runProbe(o options, client *http.Client) {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if o.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.duration)
		defer cancel()
	}
	var out sync.Mutex
	var wg sync.WaitGroup
	sent := map[string]int{}
	failed := map[string]int{}
	base := strings.TrimRight(o.server, "/")
	// One schedule per kind: request k is sent at start + k/rate, whatever
	// the earlier ones are doing, so a slow apiserver shows as latency and
	// not as fewer samples.
	schedule := func(kind, path string, rate float64) {
		defer wg.Done()
		interval := time.Duration(float64(time.Second) / rate)
		start := time.Now()
		for k := 0; ; k++ {
			at := start.Add(time.Duration(k) * interval)
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Until(at)):
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				t0 := time.Now()
				status, _ := do(client, http.MethodGet, base+path, nil)
				latency := time.Since(t0)
				out.Lock()
				defer out.Unlock()
				sent[kind]++
				if status != http.StatusOK {
					failed[kind]++
				}
				fmt.Printf("s %d %s %d %d\n", t0.UnixMilli(), kind, latency.Microseconds(), status)
			}()
		}
	}
	wg.Add(1)
	go schedule("get", o.getPath, o.getRate)
	if o.listRate > 0 {
		wg.Add(1)
		go schedule("list", o.listPath, o.listRate)
	}
	wg.Wait()
	wire.PrintReport(name, probeReport{Mode: "probe", Sent: sent, Failed: failed})
}

func main() {
	o := parseFlags()
	client := newClient(o)
	switch o.mode {
	case "create":
		runCreate(o, client)
	case "probe":
		runProbe(o, client)
	}
}
