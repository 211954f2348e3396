/**
 * The per-token histogram exports what prom-client's own Histogram exports for the same observations:
 * the same text, line for line, and the same JSON.
 */
import { Histogram, Registry } from "prom-client";
import { expect, it } from "vitest";
import { ITL_BUCKETS } from "../../../common/metrics/vllm-buckets.js";
import { createTokenHistogram } from "../../../server/metrics/token-histogram.js";

it("exports the same lines and JSON as prom-client's Histogram", async () => {
  const ours = new Registry();
  const theirs = new Registry();
  const options = {
    name: "h_seconds",
    help: "Time between two relayed tokens.",
    labelNames: ["model", "version"],
  };
  const fast = createTokenHistogram({ ...options, buckets: ITL_BUCKETS, registry: ours });
  const reference = new Histogram({ ...options, buckets: [...ITL_BUCKETS], registers: [theirs] });
  const a = fast.observer({ model: "m", version: "stable" });
  const b = fast.observer({ model: "m", version: "canary" });
  fast.observer({ model: "never", version: "observed" }); // no series until an observation
  const values = [
    0,
    0.001,
    0.0125,
    0.0126,
    0.05,
    0.3,
    7,
    1e6,
    ...Array.from({ length: 500 }, (_, i) => i / 997),
  ];
  for (const [i, v] of values.entries()) {
    (i % 3 === 0 ? b : a)(v);
    reference.observe({ model: "m", version: i % 3 === 0 ? "canary" : "stable" }, v);
  }
  expect(await ours.metrics()).toBe(await theirs.metrics());
  expect(await ours.getMetricsAsJSON()).toEqual(await theirs.getMetricsAsJSON());
});
