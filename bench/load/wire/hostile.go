package wire

import (
	"sort"
	"sync"
	"time"
)

// Outcomes counts the attempts of the hostile generators by kind and by the
// answer each got; safe for concurrent use.
type Outcomes struct {
	mu     sync.Mutex
	counts map[string]map[string]int
}

func NewOutcomes() *Outcomes { return &Outcomes{counts: map[string]map[string]int{}} }

func (o *Outcomes) Add(kind, outcome string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.counts[kind] == nil {
		o.counts[kind] = map[string]int{}
	}
	o.counts[kind][outcome]++
}

// Report is the counts and their total, for the JSON line.
func (o *Outcomes) Report() (map[string]map[string]int, int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	total := 0
	for _, outcomes := range o.counts {
		for _, n := range outcomes {
			total += n
		}
	}
	return o.counts, total
}

// LatencyOf summarises the latencies of successful calls (sorted in place).
func LatencyOf(latencies []time.Duration) Latency {
	sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
	if len(latencies) == 0 {
		return Percentiles(func(float64) time.Duration { return 0 }, 0)
	}
	quantile := func(q float64) time.Duration { return latencies[min(len(latencies)-1, int(q*float64(len(latencies))))] }
	return Percentiles(quantile, latencies[len(latencies)-1])
}

// Paced calls fn(i) on its own goroutine rate times a second until end, then
// waits for every call. A ticker keeps the schedule, so the rate does not sag
// when the server under test is slow.
func Paced(rate float64, end time.Time, fn func(i int)) {
	ticker := time.NewTicker(time.Duration(float64(time.Second) / rate))
	defer ticker.Stop()
	var inFlight sync.WaitGroup
	for i := 0; time.Now().Before(end); i++ {
		inFlight.Add(1)
		go func(i int) {
			defer inFlight.Done()
			fn(i)
		}(i)
		<-ticker.C
	}
	inFlight.Wait()
}
