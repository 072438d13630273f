// Work queue metrics, labelled by queue name only. Several queues share one registry, so the
// metrics are created once per registry and looked up afterwards. The in-progress gauges are
// computed at scrape time from the queues that registered, so stuck work shows while it is stuck.
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';

type Labels = 'name';

export interface WorkQueueMetrics {
  depth: Gauge<Labels>;
  adds: Counter<Labels>;
  retries: Counter<Labels>;
  queueDuration: Histogram<Labels>;
  workDuration: Histogram<Labels>;
  /** Queues whose keys in progress the scrape-time gauges read; a queue leaves once drained. */
  inProgress: Set<InProgress>;
}

/** What a queue tells about the keys its workers hold. */
export interface InProgress {
  readonly name: string;
  /** Seconds each held key has been processed so far. */
  runningSeconds(): number[];
}

// Reconciles talk to the apiserver and the HSM: milliseconds to a minute.
const secondsBuckets = [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

const registered = new WeakMap<Registry, WorkQueueMetrics>();

export function workQueueMetrics(registry: Registry): WorkQueueMetrics {
  const existing = registered.get(registry);
  if (existing) return existing;
  const registers = [registry];
  const labelNames = ['name'] as const;
  const inProgress = new Set<InProgress>();
  /** Per queue name, the held keys' run times, from every registered queue of that name. */
  const names = new Set<string>();
  const running = (): Map<string, number[]> => {
    // A name whose queues are gone (leadership ended) reads 0 rather than its last value.
    for (const queue of inProgress) names.add(queue.name);
    const byName = new Map<string, number[]>([...names].map((name) => [name, []]));
    for (const queue of inProgress) byName.set(queue.name, [...(byName.get(queue.name) ?? []), ...queue.runningSeconds()]);
    return byName;
  };
  const longest: Gauge<Labels> = new Gauge({
    name: 'keyward_workqueue_longest_running_processor_seconds',
    help: 'At scrape time: how long the oldest key in progress has been processed.',
    labelNames,
    registers,
    collect: () => {
      for (const [name, seconds] of running()) longest.set({ name }, Math.max(0, ...seconds));
    },
  });
  const unfinished: Gauge<Labels> = new Gauge({
    name: 'keyward_workqueue_unfinished_work_seconds',
    help: 'At scrape time: the summed time the keys in progress have been processed so far.',
    labelNames,
    registers,
    collect: () => {
      for (const [name, seconds] of running()) unfinished.set({ name }, seconds.reduce((sum, s) => sum + s, 0));
    },
  });
  const metrics: WorkQueueMetrics = {
    depth: new Gauge({ name: 'keyward_workqueue_depth', help: 'Keys ready to be processed.', labelNames, registers }),
    adds: new Counter({ name: 'keyward_workqueue_adds_total', help: 'Keys added (not counting duplicates of waiting keys).', labelNames, registers }),
    retries: new Counter({ name: 'keyward_workqueue_retries_total', help: 'Keys re-added with backoff after a failure.', labelNames, registers }),
    queueDuration: new Histogram({
      name: 'keyward_workqueue_queue_duration_seconds',
      help: 'Time a key waits in the queue before a worker takes it.',
      labelNames,
      buckets: secondsBuckets,
      registers,
    }),
    workDuration: new Histogram({
      name: 'keyward_workqueue_work_duration_seconds',
      help: 'Time a worker spends on a key, from get to done.',
      labelNames,
      buckets: secondsBuckets,
      registers,
    }),
    inProgress,
  };
  registered.set(registry, metrics);
  return metrics;
}
