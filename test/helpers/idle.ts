/**
 * The end-to-end idle invariant, asserted after every test that cancels, resets, floods or stalls: the
 * gateway holds nothing for requests (none in the pipeline, every accepted request ended exactly once, no
 * upstream request open, no retry slot, no tenant stream or token reservation), its in-flight metrics are
 * back to zero, and no simulated replica still runs or queues a sequence (the upstream work was aborted).
 * Also the waits those tests use: waitFor (a condition with a deadline) and roundTripMs (the machine's
 * current round trip, which their "promptly" bounds are stated against).
 */
import { expect } from "vitest";
import type { Harness } from "./gateway-harness.js";

/** Sums a metric's samples on a /metrics page. */
export function metricSum(page: string, name: string): number {
  let sum = 0;
  for (const line of page.split("\n")) {
    if (!line.startsWith(name) || (line[name.length] !== "{" && line[name.length] !== " ")) continue;
    const value = Number(line.slice(line.lastIndexOf(" ") + 1));
    if (Number.isFinite(value)) sum += value;
  }
  return sum;
}

/** What should be zero (or equal) when idle, in one object, so that a failure shows all of it. */
async function snapshot(h: Harness) {
  const a = h.gateway.activity();
  const page = await h.gateway.metrics.registry.metrics();
  const engines = h.all().map((r) => r.engine.stats());
  return {
    inFlight: a.inFlight,
    notEnded: a.accepted - a.ended,
    upstreamInFlight: a.upstreamInFlight,
    retryBudgetInFlight: a.retryBudgetInFlight,
    tenantStreams: a.tenantStreams,
    reservedTokens: a.reservedTokens,
    inFlightMetric: metricSum(page, "kinfer_gateway_requests_in_flight"),
    tenantStreamsMetric: metricSum(page, "kinfer_gateway_tenant_streams"),
    replicaSequences: engines.reduce((n, s) => n + s.running + s.waiting, 0),
  };
}

const IDLE = {
  inFlight: 0,
  notEnded: 0,
  upstreamInFlight: 0,
  retryBudgetInFlight: 0,
  tenantStreams: 0,
  reservedTokens: 0,
  inFlightMetric: 0,
  tenantStreamsMetric: 0,
  replicaSequences: 0,
};

/** Waits (up to `timeoutMs`) for the idle state and fails with the last snapshot if it never comes. */
export async function expectIdle(h: Harness, timeoutMs = 5000): Promise<void> {
  const until = performance.now() + timeoutMs;
  let last = await snapshot(h);
  while (JSON.stringify(last) !== JSON.stringify(IDLE) && performance.now() < until) {
    await new Promise((r) => setTimeout(r, 20));
    last = await snapshot(h);
  }
  expect(last).toEqual(IDLE);
}

/** Resolves when `condition` holds, polling every 5 ms; rejects after `timeoutMs` naming `what`. */
export async function waitFor(
  condition: () => boolean | Promise<boolean>,
  what: string,
  timeoutMs = 5000,
): Promise<number> {
  const started = performance.now();
  while (!(await condition())) {
    if (performance.now() - started > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
  return performance.now() - started;
}

/**
 * How long a one-token completion through the gateway at `url` takes on this machine now (the median of
 * `n`): the baseline that a test's "promptly" is stated against, so that a bound grows with the machine's
 * load instead of failing when the machine is merely busy (and still fails when something waits for a
 * timeout, a step of a long generation or the next scrape).
 */
export async function roundTripMs(
  url: string,
  model: string,
  n = 7,
  headers: Record<string, string> = {},
): Promise<number> {
  const took: number[] = [];
  for (let i = 0; i < n; i++) {
    const started = performance.now();
    const res = await fetch(`${url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json", ...headers },
      body: JSON.stringify({ model, prompt: "x", max_tokens: 1 }),
    });
    await res.text();
    if (res.status !== 200) throw new Error(`baseline request answered ${res.status}`);
    took.push(performance.now() - started);
  }
  return took.sort((a, b) => a - b)[Math.floor(n / 2)] as number;
}
