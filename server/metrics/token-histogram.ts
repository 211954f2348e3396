/**
 * A Prometheus histogram for what is observed once per relayed token (inter-token latency), registered in
 * prom-client's registry and exported exactly as prom-client's own Histogram exports (same lines, same
 * label order), but with an observer bound to its label set once per request. prom-client's observe()
 * builds and hashes the label set and scans the buckets on every call, about 3 µs a token here (5% of
 * the relay's CPU at 256 streams); a bound observer is a binary search and two additions.
 *
 * It must never hold more than one entry per label set: label values come from validated model and
 * version names only (as for every gateway metric).
 */
import type { Registry } from "prom-client";

interface Series {
  readonly labels: Readonly<Record<string, string>>;
  /** Observations per bucket (not cumulative), the last one past every bound (+Inf). */
  readonly counts: Float64Array;
  sum: number;
}

export interface TokenHistogram {
  /** An observer for one label set; keep it for the request's lifetime. */
  observer(labels: Readonly<Record<string, string>>): (value: number) => void;
}

export function createTokenHistogram(options: {
  name: string;
  help: string;
  labelNames: readonly string[];
  buckets: readonly number[];
  registry: Registry;
}): TokenHistogram {
  const { name, help, labelNames } = options;
  const bounds = Float64Array.from([...options.buckets].sort((a, b) => a - b));
  const series = new Map<string, Series>();

  /** Index of the first bound >= value (bounds.length past the last). */
  const bucketOf = (value: number) => {
    let lo = 0;
    let hi = bounds.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((bounds[mid] as number) < value) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  };

  const metric = {
    name,
    help,
    type: "histogram" as const,
    aggregator: "sum" as const,
    // The shape prom-client's Histogram exports (labels: le; sharedLabels: the series' labels).
    getForPromString() {
      const values: unknown[] = [];
      for (const s of series.values()) {
        let acc = 0;
        for (let i = 0; i < bounds.length; i++) {
          acc += s.counts[i] as number;
          values.push({
            labels: { le: bounds[i] },
            sharedLabels: s.labels,
            value: acc,
            metricName: `${name}_bucket`,
            exemplar: null,
          });
        }
        const count = acc + (s.counts[bounds.length] as number);
        values.push(
          {
            labels: { le: "+Inf" },
            sharedLabels: s.labels,
            value: count,
            metricName: `${name}_bucket`,
            exemplar: null,
          },
          { labels: {}, sharedLabels: s.labels, value: s.sum, metricName: `${name}_sum` },
          { labels: {}, sharedLabels: s.labels, value: count, metricName: `${name}_count` },
        );
      }
      return { name, help, type: "histogram", values, aggregator: "sum" };
    },
    get() {
      const data = metric.getForPromString();
      return {
        ...data,
        values: (data.values as { labels: object; sharedLabels: object }[]).map(
          ({ labels, sharedLabels, ...rest }) => ({ ...rest, labels: { ...labels, ...sharedLabels } }),
        ),
      };
    },
    reset() {
      // Zeroed rather than dropped: observers bound to a series keep counting into it.
      for (const s of series.values()) {
        s.counts.fill(0);
        s.sum = 0;
      }
    },
  };
  options.registry.registerMetric(metric as never);

  return {
    observer(labels) {
      const key = labelNames.map((l) => labels[l] ?? "").join("\u0000");
      let bound = series.get(key);
      return (value) => {
        // The series appears with its first observation, as prom-client's do.
        if (bound === undefined) {
          bound = series.get(key) ?? {
            labels: { ...labels },
            counts: new Float64Array(bounds.length + 1),
            sum: 0,
          };
          series.set(key, bound);
        }
        (bound.counts[bucketOf(value)] as number)++;
        bound.sum += value;
      };
    },
  };
}
