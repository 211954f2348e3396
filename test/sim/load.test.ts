/**
 * The simulator under load, over HTTP against a separate `kinfer-sim` process: a concurrency sweep from 1
 * to 256 streams shows time to first token and inter-token latency rising as the engine model says, and
 * requests waiting once concurrency exceeds max_num_seqs.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { defaultEngineOptions as d } from "../../sim/engine/engine-options.js";
import { type SimProcess, startSimProcess } from "../helpers/sim-process.js";
import { postJson } from "../helpers/sse.js";

const MAX_NUM_SEQS = 128;
const TOKENS = 24;
let sim: SimProcess;
let url: string;

beforeAll(async () => {
  sim = await startSimProcess(["--model", "m", "--max-num-seqs", String(MAX_NUM_SEQS)]);
  url = sim.urls.get("m")?.[0] as string;
  // Warm up: the first requests pay for connection setup and JIT compilation, not the model.
  for (let i = 0; i < 5; i++) await timedStream(i);
});
afterAll(() => sim.stop());

interface StreamTiming {
  ttftMs: number;
  /** Mean gap between tokens after the first (robust to chunks that arrive in one read). */
  itlMs: number;
}

async function timedStream(i: number): Promise<StreamTiming> {
  const started = performance.now();
  const res = await postJson(`${url}/v1/completions`, {
    model: "m",
    prompt: `Request ${i}: write about schedulers.`,
    max_tokens: TOKENS,
    ignore_eos: true,
    stream: true,
  });
  const tokenTimes: number[] = [];
  let buffered = "";
  for await (const chunk of res.body as AsyncIterable<Uint8Array>) {
    const now = performance.now();
    buffered += new TextDecoder().decode(chunk);
    const events = buffered.split("\n\n");
    buffered = events.pop() ?? "";
    for (const e of events)
      if (e.startsWith("data: {") && e.includes('"finish_reason":null')) tokenTimes.push(now);
  }
  expect(tokenTimes).toHaveLength(TOKENS);
  const first = tokenTimes[0] as number;
  return { ttftMs: first - started, itlMs: ((tokenTimes.at(-1) as number) - first) / (TOKENS - 1) };
}

/** vLLM's scheduler gauges: requests waiting and requests running (in the batch). */
async function schedulerGauges(): Promise<{ waiting: number; running: number }> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const gauge = (name: string) =>
    Number(
      text
        .split("\n")
        .find((l) => l.startsWith(`${name}{`))
        ?.split(" ")
        .at(-1),
    );
  return { waiting: gauge("vllm:num_requests_waiting"), running: gauge("vllm:num_requests_running") };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;

describe("concurrency sweep", () => {
  const results = new Map<number, { ttft: number; itl: number; maxWaiting: number; maxRunning: number }>();

  // The sweep runs before the tests that read it, whichever of them runs (one alone, with -t, included).
  beforeAll(async () => {
    for (const concurrency of [1, 16, 64, 128, 256]) {
      let maxWaiting = 0;
      let maxRunning = 0;
      let sampling = true;
      const sampler = (async () => {
        while (sampling) {
          const { waiting, running } = await schedulerGauges();
          maxWaiting = Math.max(maxWaiting, waiting);
          maxRunning = Math.max(maxRunning, running);
          await new Promise((r) => setTimeout(r, 20));
        }
      })();
      const timings = await Promise.all(Array.from({ length: concurrency }, (_, i) => timedStream(i)));
      sampling = false;
      await sampler;
      results.set(concurrency, {
        ttft: median(timings.map((t) => t.ttftMs)),
        itl: median(timings.map((t) => t.itlMs)),
        maxWaiting,
        maxRunning,
      });
    }
    console.table([...results].map(([c, r]) => ({ concurrency: c, ...r })));
  }, 120_000);

  it("measured every concurrency of the sweep", () => {
    expect([...results.keys()]).toEqual([1, 16, 64, 128, 256]);
  });

  it("inter-token latency follows decodeBaseMs + decodeMsPerSeq x batch (within 20%)", () => {
    expect(results.size).toBe(5);
    for (const [concurrency, r] of results) {
      const batch = Math.min(concurrency, MAX_NUM_SEQS);
      const model = d.decodeBaseMs + d.decodeMsPerSeq * batch;
      expect(r.itl, `ITL at ${concurrency} streams`).toBeGreaterThan(model * 0.8);
      expect(r.itl, `ITL at ${concurrency} streams`).toBeLessThan(model * 1.2);
    }
  });

  it("time to first token rises with load, sharply once requests queue", () => {
    const ttft = (c: number) => results.get(c)?.ttft as number;
    expect(results.size).toBe(5);
    // A lone prompt (~12 ms in the model) against a full batch's wait: relative, not absolute, bounds.
    expect(ttft(1)).toBeLessThan(ttft(256) / 10);
    expect(ttft(64)).toBeGreaterThan(ttft(1));
    expect(ttft(256)).toBeGreaterThan(ttft(128));
    // Past max_num_seqs, half the streams wait for a whole generation of the first batch.
    const batchTime = TOKENS * (d.decodeBaseMs + d.decodeMsPerSeq * MAX_NUM_SEQS);
    expect(ttft(256)).toBeGreaterThan(batchTime * 0.8);
  });

  it("requests wait once concurrency exceeds max_num_seqs", () => {
    // The batch fills to max_num_seqs and never beyond it; the rest wait.
    expect(results.get(256)?.maxRunning).toBe(MAX_NUM_SEQS);
    expect(results.get(256)?.maxWaiting).toBeGreaterThanOrEqual(256 - MAX_NUM_SEQS - 10);
    expect(results.get(1)?.maxWaiting).toBe(0);
  });
});
