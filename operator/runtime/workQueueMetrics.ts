// Work queue metrics, labelled by queue name only. Several queues share one registry, so the
// metrics are created once per registry and looked up afterwards.
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';

type Labels = 'name';

export interface WorkQueueMetrics {
  depth: Gauge<Labels>;
  adds: Counter<Labels>;
  retries: Counter<Labels>;
  queueDuration: Histogram<Labels>;
  workDuration: Histogram<Labels>;
}

// Reconciles talk to the apiserver and the HSM: milliseconds to a minute.
const secondsBuckets = [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

const registered = new WeakMap<Registry, WorkQueueMetrics>();

export function workQueueMetrics(registry: Registry): WorkQueueMetrics {
  const existing = registered.get(registry);
  if (existing) return existing;
  const registers = [registry];
  const labelNames = ['name'] as const;
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
  };
  registered.set(registry, metrics);
  return metrics;
}
