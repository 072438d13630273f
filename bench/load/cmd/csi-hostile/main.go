// Command csi-hostile drives a Secrets Store CSI provider's socket with the
// Mounts of real pods (from -legit, remounting at -legit-rate) while hostile
// workers send what an attacker on the node could: large distinct requests
// with made-up tokens, bursts of concurrent requests near every size limit,
// tokens of deleted pods (from -deleted), and malformed requests of every
// kind. It prints one JSON line: the legitimate Mounts' latency and failures,
// and the hostile attempts by kind and by the code they were answered with.
//
//	csi-hostile -socket /run/keyward.sock -legit pods.json -deleted gone.json -duration 30s
package main

import (
	"bytes"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"

	"keyward.local/bench/load/wire"
)

const (
	name        = "csi-hostile"
	tokensKey   = "csi.storage.k8s.io/serviceAccount.tokens"
	callTimeout = 30 * time.Second
	valueBytes  = 250 * 1024 // under the provider's 256 KiB per attribute
	paddingKeys = 3          // with the objects value: just under 1 MiB of attributes
	expectFiles = 3
)

type options struct {
	socket    string
	legit     string
	deleted   string
	duration  time.Duration
	legitRate float64
	workers   int
	burst     int
	label     string
}

func parseFlags() options {
	var o options
	flag.StringVar(&o.socket, "socket", "", "path of the provider's unix socket (required)")
	flag.StringVar(&o.legit, "legit", "", "JSON file of MountRequests of live pods, served by the provider (required)")
	flag.StringVar(&o.deleted, "deleted", "", "JSON file of MountRequests of deleted pods (optional)")
	flag.DurationVar(&o.duration, "duration", 30*time.Second, "how long the attack and the legitimate load last")
	flag.Float64Var(&o.legitRate, "legit-rate", 20, "legitimate Mounts per second")
	flag.IntVar(&o.workers, "workers", 4, "hostile workers, each cycling through the kinds of attack")
	flag.IntVar(&o.burst, "burst", 30, "concurrent near-limit requests in one burst")
	flag.StringVar(&o.label, "label", "", "free text copied into the output")
	flag.Parse()
	var problems []string
	if o.socket == "" || o.legit == "" {
		problems = append(problems, "-socket and -legit are required")
	}
	if o.duration <= 0 || o.legitRate <= 0 || o.workers < 0 || o.burst < 0 {
		problems = append(problems, "-duration and -legit-rate must be positive, -workers and -burst not negative")
	}
	wire.RejectFlags(name, problems)
	return o
}

func readRequests(path string) []wire.MountRequest {
	data, err := os.ReadFile(path)
	if err != nil {
		wire.Fail(name, "%v", err)
	}
	var reqs []wire.MountRequest
	if err := json.Unmarshal(data, &reqs); err != nil || len(reqs) == 0 {
		wire.Fail(name, "%s is not a non-empty JSON array of MountRequests", path)
	}
	return reqs
}

// ---------------------------------------------------------------- request shapes

func randomText(n int) string {
	b := make([]byte, (n+1)/2)
	_, _ = crand.Read(b)
	return hex.EncodeToString(b)[:n]
}

// withAttributes returns r with attributes changed by edit, re-encoded.
func withAttributes(r wire.MountRequest, edit func(map[string]string)) wire.MountRequest {
	attrs := map[string]string{}
	_ = json.Unmarshal([]byte(r.Attributes), &attrs)
	edit(attrs)
	out, _ := json.Marshal(attrs)
	r.Attributes = string(out)
	return r
}

// A marker stands where each request gets fresh random text: a template is
// encoded once and only the marked bytes change per request, so the generator
// spends little CPU (on 2 shared cores its work would be measured too), while
// no two requests are alike and no cache can hold them.
const marker = "UNIQUE-0123456789abcdef0123456789"

var padding = randomText(valueBytes)

// nearLimit pads r's attributes to just under the provider's limits: its
// objects text grows by a YAML comment, and extra keys (a pod author may set
// any) carry the rest.
func nearLimit(r wire.MountRequest) wire.MountRequest {
	return withAttributes(r, func(a map[string]string) {
		comment := "\n# " + marker + " "
		a["objects"] = a["objects"] + comment + padding[:valueBytes-len(a["objects"])-len(comment)]
		for i := 0; i < paddingKeys; i++ {
			a[fmt.Sprintf("padding-%d", i)] = padding
		}
	})
}

// madeUpToken replaces r's token with a JWT-shaped one the apiserver never issued.
func madeUpToken(r wire.MountRequest) wire.MountRequest {
	return withAttributes(r, func(a map[string]string) {
		tokens, _ := json.Marshal(map[string]map[string]string{"keyward": {
			"token":               "eyJhbGciOiJSUzI1NiJ9." + marker + randomText(600) + "." + randomText(340),
			"expirationTimestamp": time.Now().Add(time.Hour).UTC().Format(time.RFC3339),
		}})
		a[tokensKey] = string(tokens)
	})
}

// template is an encoded request whose markers are rewritten for each use.
type template struct {
	bytes   []byte
	markers []int
}

func newTemplate(r wire.MountRequest) template {
	b := r.Encode()
	t := template{bytes: b}
	for at := 0; ; {
		i := bytes.Index(b[at:], []byte(marker))
		if i < 0 {
			return t
		}
		t.markers = append(t.markers, at+i)
		at += i + len(marker)
	}
}

// fresh is a copy of the template with new random text at every marker.
func (t template) fresh() []byte {
	out := append([]byte(nil), t.bytes...)
	for _, at := range t.markers {
		copy(out[at:], randomText(len(marker)))
	}
	return out
}

// ---------------------------------------------------------------- results

type results struct {
	mu        sync.Mutex
	latencies []time.Duration
	calls     int
	failures  map[string]int
}

func (r *results) legit(d time.Duration, code string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	if code != "" {
		r.failures[code]++
		return
	}
	r.latencies = append(r.latencies, d)
}

type report struct {
	Bench         string                    `json:"bench"`
	Label         string                    `json:"label"`
	DurationS     float64                   `json:"duration_s"`
	LegitCalls    int                       `json:"legit_calls"`
	LegitFailures map[string]int            `json:"legit_failures"`
	Legit         wire.Latency              `json:"legit"`
	HostileTotal  int                       `json:"hostile_attempts"`
	Hostile       map[string]map[string]int `json:"hostile"`
}

// ---------------------------------------------------------------- main

func main() {
	o := parseFlags()
	legit := readRequests(o.legit)
	var deleted []wire.MountRequest
	if o.deleted != "" {
		deleted = readRequests(o.deleted)
	}
	driver, err := wire.DialCSIProvider(o.socket)
	if err != nil {
		wire.Fail(name, "%v", err)
	}
	defer driver.Close()
	if code := wire.Mount(driver, legit[0].Encode(), callTimeout, expectFiles); code != "" {
		wire.Fail(name, "the first legitimate Mount was refused: %s", code)
	}

	r := &results{failures: map[string]int{}}
	hostile := wire.NewOutcomes()
	end := time.Now().Add(o.duration)
	var wg sync.WaitGroup

	wg.Add(1)
	go func() {
		defer wg.Done()
		wire.Paced(o.legitRate, end, func(i int) {
			start := time.Now()
			code := wire.Mount(driver, legit[i%len(legit)].Encode(), callTimeout, expectFiles)
			r.legit(time.Since(start), code)
		})
	}()

	unauthenticated := make([]template, len(legit))
	bursty := make([]template, len(legit))
	for i, r := range legit {
		unauthenticated[i] = newTemplate(nearLimit(madeUpToken(r)))
		bursty[i] = newTemplate(nearLimit(r))
	}
	mount := func(conn *grpc.ClientConn, kind string, req []byte) {
		code := wire.Mount(conn, req, callTimeout, expectFiles)
		if code == "" {
			code = "SERVED"
		}
		hostile.Add(kind, code)
	}
	attacks := []func(conn *grpc.ClientConn, i int){
		func(c *grpc.ClientConn, i int) {
			mount(c, "unauthenticated_large", unauthenticated[i%len(legit)].fresh())
		},
		func(c *grpc.ClientConn, i int) {
			var burst sync.WaitGroup
			for j := 0; j < o.burst; j++ {
				req := bursty[(i+j)%len(legit)].fresh()
				burst.Add(1)
				go func() {
					defer burst.Done()
					mount(c, "near_limit_burst", req)
				}()
			}
			burst.Wait()
		},
		func(c *grpc.ClientConn, i int) {
			if len(deleted) > 0 {
				mount(c, "deleted_pod_token", deleted[i%len(deleted)].Encode())
			}
		},
		func(c *grpc.ClientConn, i int) {
			base := legit[i%len(legit)]
			mount(c, "malformed_bytes", []byte(randomText(64)))
			notJSON := base
			notJSON.Attributes = "{" + randomText(100)
			mount(c, "malformed_attributes", notJSON.Encode())
			traversal := base
			traversal.TargetPath = strings.Replace(base.TargetPath, "/volumes/", "/../"+randomText(8)+"/volumes/", 1)
			mount(c, "target_path_traversal", traversal.Encode())
			mount(c, "objects_not_yaml", withAttributes(base, func(a map[string]string) { a["objects"] = "- [" + randomText(50) }).Encode())
		},
	}
	for w := 0; w < o.workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			conn, err := wire.DialCSIProvider(o.socket)
			if err != nil {
				hostile.Add("worker", "client_error")
				return
			}
			defer conn.Close()
			for i := w; time.Now().Before(end); i++ {
				attacks[i%len(attacks)](conn, i)
			}
		}(w)
	}
	wg.Wait()

	counts, total := hostile.Report()
	wire.PrintReport(name, report{
		Bench:         "csi-hostile",
		Label:         o.label,
		DurationS:     o.duration.Seconds(),
		LegitCalls:    r.calls,
		LegitFailures: r.failures,
		Legit:         wire.LatencyOf(r.latencies),
		HostileTotal:  total,
		Hostile:       counts,
	})
}
