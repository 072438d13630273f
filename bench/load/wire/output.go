package wire

import (
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"time"
)

// Latency is the percentile block of both reports, so the TypeScript benches
// read the same field names from each.
type Latency struct {
	P50Ms float64 `json:"p50_ms"`
	P90Ms float64 `json:"p90_ms"`
	P99Ms float64 `json:"p99_ms"`
	MaxMs float64 `json:"max_ms"`
}

// Percentiles fills a Latency from a quantile function (q in 0..1) and the
// longest latency.
func Percentiles(quantile func(q float64) time.Duration, longest time.Duration) Latency {
	return Latency{
		P50Ms: Millis(quantile(0.50)),
		P90Ms: Millis(quantile(0.90)),
		P99Ms: Millis(quantile(0.99)),
		MaxMs: Millis(longest),
	}
}

// Millis is d in milliseconds to the microsecond: finer digits are noise.
func Millis(d time.Duration) float64 { return Round(float64(d)/1e6, 3) }

// Round rounds v to places decimals, so the JSON stays readable.
func Round(v float64, places int) float64 {
	p := math.Pow10(places)
	return math.Round(v*p) / p
}

// PrintReport prints v as one JSON line on stdout: the TypeScript benches
// parse the last line a load generator prints.
func PrintReport(cmd string, v any) {
	out, err := json.Marshal(v)
	if err != nil {
		Fail(cmd, "encoding the report: %v", err)
	}
	fmt.Println(string(out))
}

// Fail prints "cmd: message" on stderr and exits 1; the benches show stderr
// when a load generator fails.
func Fail(cmd, format string, args ...any) {
	fmt.Fprintf(os.Stderr, cmd+": "+format+"\n", args...)
	os.Exit(1)
}

// RejectFlags prints each problem found in the flags, then the usage, and
// exits 2 as the flag package does; it returns when there is none.
func RejectFlags(cmd string, problems []string) {
	if len(problems) == 0 {
		return
	}
	for _, p := range problems {
		fmt.Fprintln(os.Stderr, cmd+":", p)
	}
	flag.Usage()
	os.Exit(2)
}
