/**
 * The engine model in virtual time: timings follow the documented formulas exactly, the batch and the
 * KV cache bound what runs, prefix caching makes repeated prefixes cheaper, and aborts free blocks.
 */
import { describe, expect, it } from "vitest";
import { createVirtualClock } from "../../../sim/engine/clock.js";
import {
  createEngine,
  type Engine,
  type SequenceResult,
  type SequenceSpec,
} from "../../../sim/engine/engine.js";
import { type EngineOptions, resolveEngineOptions } from "../../../sim/engine/engine-options.js";

function setup(overrides: Partial<EngineOptions> = {}) {
  const clock = createVirtualClock();
  const engine = createEngine(resolveEngineOptions(overrides), clock);
  return { clock, engine };
}

/** Distinct token ids, so that unrelated prompts share no prefix. */
let nextToken = 1;
function prompt(length: number): number[] {
  return Array.from({ length }, () => nextToken++);
}

interface Tracked {
  tokens: number[];
  result?: SequenceResult;
}

function submit(engine: Engine, spec: SequenceSpec): Tracked & { abort(): void } {
  const tracked: Tracked = { tokens: [] };
  const handle = engine.submit(spec, {
    onToken: (_, at) => tracked.tokens.push(at),
    onFinish: (r) => {
      tracked.result = r;
    },
  });
  return Object.assign(tracked, { abort: handle.abort });
}

describe("engine timing", () => {
  it("a lone request: TTFT = step base + overhead + prompt x per-token, then one step per token", () => {
    const { clock, engine } = setup();
    const o = engine.options;
    const r = submit(engine, { promptTokens: prompt(1000), targetTokens: 10, finishReason: "length" });
    clock.run();
    const ttft = o.decodeBaseMs + o.prefillOverheadMs + 1000 * o.prefillMsPerToken;
    expect(r.tokens[0]).toBeCloseTo(ttft, 9);
    const itl = o.decodeBaseMs + o.decodeMsPerSeq * 1;
    for (let i = 1; i < r.tokens.length; i++) {
      expect((r.tokens[i] as number) - (r.tokens[i - 1] as number)).toBeCloseTo(itl, 9);
    }
    expect(r.result).toMatchObject({
      reason: "length",
      promptTokens: 1000,
      completionTokens: 10,
      cachedTokens: 0,
    });
  });

  it("inter-token latency grows with the batch: base + per-sequence cost x batch size", () => {
    for (const batch of [1, 8, 64]) {
      const { clock, engine } = setup();
      const seqs = Array.from({ length: batch }, () =>
        submit(engine, { promptTokens: prompt(16), targetTokens: 20, finishReason: "length" }),
      );
      clock.run();
      const o = engine.options;
      const gaps = seqs.map((s) => (s.tokens[10] as number) - (s.tokens[9] as number));
      for (const gap of gaps) expect(gap).toBeCloseTo(o.decodeBaseMs + o.decodeMsPerSeq * batch, 9);
    }
  });

  it("chunked prefill: a prompt over the step budget spans several steps", () => {
    const { clock, engine } = setup({ maxNumBatchedTokens: 512 });
    const o = engine.options;
    const r = submit(engine, { promptTokens: prompt(2048), targetTokens: 1, finishReason: "length" });
    clock.run();
    // 4 steps of 512 tokens; the overhead is paid once.
    expect(r.tokens[0]).toBeCloseTo(4 * o.decodeBaseMs + o.prefillOverheadMs + 2048 * o.prefillMsPerToken, 9);
  });

  it("a slowdown factor scales every step", () => {
    const { clock, engine } = setup({ slowdown: 3 });
    const o = engine.options;
    const r = submit(engine, { promptTokens: prompt(100), targetTokens: 1, finishReason: "length" });
    clock.run();
    expect(r.tokens[0]).toBeCloseTo(
      3 * (o.decodeBaseMs + o.prefillOverheadMs + 100 * o.prefillMsPerToken),
      9,
    );
  });
});

describe("engine capacity", () => {
  it("runs at most maxNumSeqs sequences; the rest wait in FIFO order", () => {
    const { clock, engine } = setup({ maxNumSeqs: 4 });
    const seqs = Array.from({ length: 10 }, () =>
      submit(engine, { promptTokens: prompt(32), targetTokens: 5, finishReason: "length" }),
    );
    // The first arrival starts a step alone (the engine was idle); the others join at its end.
    const o = engine.options;
    clock.run(o.decodeBaseMs + o.prefillOverheadMs + 32 * o.prefillMsPerToken);
    expect(engine.stats()).toMatchObject({ running: 4, waiting: 6 });
    clock.run();
    const firstTokens = seqs.map((s) => s.tokens[0] as number);
    expect([...firstTokens].sort((a, b) => a - b)).toEqual(firstTokens); // FIFO
    expect(engine.stats()).toMatchObject({ running: 0, waiting: 0, kvCacheUsage: 0 });
  });

  it("admission waits for KV blocks: a prompt that does not fit waits until blocks are freed", () => {
    const { clock, engine } = setup({ blockSize: 16, numGpuBlocks: 20 });
    const a = submit(engine, { promptTokens: prompt(16 * 15), targetTokens: 3, finishReason: "length" });
    const b = submit(engine, { promptTokens: prompt(16 * 10), targetTokens: 3, finishReason: "length" });
    clock.run(1);
    expect(engine.stats()).toMatchObject({ running: 1, waiting: 1 });
    clock.run();
    expect(b.tokens[0]).toBeGreaterThan(a.result?.finishMs as number);
  });

  it("reports KV usage from the blocks held", () => {
    const { clock, engine } = setup({ blockSize: 16, numGpuBlocks: 100 });
    submit(engine, { promptTokens: prompt(16 * 10), targetTokens: 50, finishReason: "length" });
    clock.run(1);
    expect(engine.stats().kvCacheUsage).toBeCloseTo(0.1, 9);
    clock.run();
    expect(engine.stats().kvCacheUsage).toBe(0);
  });

  it("preempts the newest sequence when decoding runs out of blocks, and still finishes everything", () => {
    const { clock, engine } = setup({ blockSize: 16, numGpuBlocks: 12 });
    const seqs = Array.from({ length: 3 }, () =>
      submit(engine, { promptTokens: prompt(48), targetTokens: 60, finishReason: "length" }),
    );
    clock.run();
    expect(engine.stats().preemptions).toBeGreaterThan(0);
    for (const s of seqs) expect(s.result).toMatchObject({ reason: "length", completionTokens: 60 });
    expect(engine.stats().kvCacheUsage).toBe(0);
  });

  it("rejects sequences that can never run, changing nothing", () => {
    const { engine } = setup({ maxModelLen: 100, numGpuBlocks: 1000 });
    expect(() => engine.submit({ promptTokens: [], targetTokens: 1, finishReason: "length" }, noop)).toThrow(
      RangeError,
    );
    expect(() =>
      engine.submit({ promptTokens: prompt(90), targetTokens: 20, finishReason: "length" }, noop),
    ).toThrow(/exceeds 100/);
    expect(() =>
      engine.submit({ promptTokens: prompt(5), targetTokens: 0, finishReason: "length" }, noop),
    ).toThrow(RangeError);
    expect(engine.stats()).toMatchObject({ running: 0, waiting: 0, promptTokens: 0 });
  });
});

const noop = { onToken() {}, onFinish() {} };

describe("prefix cache", () => {
  it("a repeated prompt reuses its full blocks: fewer uncached tokens, lower TTFT", () => {
    const { clock, engine } = setup();
    const o = engine.options;
    const shared = prompt(1000);
    const first = submit(engine, { promptTokens: shared, targetTokens: 2, finishReason: "length" });
    clock.run();
    const t0 = clock.now();
    const second = submit(engine, {
      promptTokens: [...shared, ...prompt(40)],
      targetTokens: 2,
      finishReason: "length",
    });
    clock.run();
    expect(first.result?.cachedTokens).toBe(0);
    expect(second.result?.cachedTokens).toBe(992); // 62 full blocks of 16
    const ttft = (second.tokens[0] as number) - t0;
    expect(ttft).toBeCloseTo(o.decodeBaseMs + o.prefillOverheadMs + (1040 - 992) * o.prefillMsPerToken, 9);
    expect(engine.stats()).toMatchObject({ prefixCacheQueries: 2040, prefixCacheHits: 992 });
  });

  it("output blocks are cached too, so the next turn of a conversation hits the whole history", () => {
    const { clock, engine } = setup();
    const turn1 = prompt(160);
    const reply = prompt(64);
    submit(engine, { promptTokens: turn1, targetTokens: 64, finishReason: "stop", outputTokens: reply });
    clock.run();
    const second = submit(engine, {
      promptTokens: [...turn1, ...reply, ...prompt(30)],
      targetTokens: 1,
      finishReason: "length",
    });
    clock.run();
    // 160 + 63 computed tokens: the last reply token's KV is never computed, so 13 full blocks.
    expect(second.result?.cachedTokens).toBe(208);
  });

  it("can be disabled", () => {
    const { clock, engine } = setup({ enablePrefixCaching: false });
    const shared = prompt(320);
    submit(engine, { promptTokens: shared, targetTokens: 1, finishReason: "length" });
    clock.run();
    const again = submit(engine, { promptTokens: shared, targetTokens: 1, finishReason: "length" });
    clock.run();
    expect(again.result?.cachedTokens).toBe(0);
  });
});

describe("abort", () => {
  it("frees the sequence's blocks at once and reports finish reason abort", () => {
    const { clock, engine } = setup({ blockSize: 16, numGpuBlocks: 100 });
    const r = submit(engine, { promptTokens: prompt(160), targetTokens: 1000 - 160, finishReason: "length" });
    clock.run(100);
    expect(engine.stats().running).toBe(1);
    r.abort();
    expect(engine.stats()).toMatchObject({ running: 0, kvCacheUsage: 0 });
    expect(r.result?.reason).toBe("abort");
    r.abort(); // idempotent
    clock.run();
    expect(r.result?.completionTokens).toBeLessThan(100);
  });

  it("aborting a waiting sequence removes it from the queue", () => {
    const { clock, engine } = setup({ maxNumSeqs: 1 });
    submit(engine, { promptTokens: prompt(16), targetTokens: 5, finishReason: "length" });
    const queued = submit(engine, { promptTokens: prompt(16), targetTokens: 5, finishReason: "length" });
    clock.run(1);
    expect(engine.stats().waiting).toBe(1);
    queued.abort();
    expect(engine.stats().waiting).toBe(0);
    expect(queued.result).toMatchObject({ reason: "abort", completionTokens: 0, scheduledMs: undefined });
    clock.run();
  });
});

describe("virtual time", () => {
  it("runs a 10,000-request workload in seconds, deterministically", () => {
    const run = () => {
      const { clock, engine } = setup({ maxNumSeqs: 256 });
      const ttfts: number[] = [];
      let seed = 7;
      const rand = () => {
        seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
        return seed / 2 ** 32;
      };
      let at = 0;
      for (let i = 0; i < 10_000; i++) {
        at += -Math.log(1 - rand()) * 10; // Poisson arrivals, 100 req/s
        const promptLen = 50 + Math.floor(rand() * 500);
        const target = 10 + Math.floor(rand() * 200);
        clock.setTimer(at, () => {
          const arrival = clock.now();
          engine.submit(
            { promptTokens: prompt(promptLen), targetTokens: target, finishReason: "length" },
            {
              onToken: (index, t) => {
                if (index === 0) ttfts.push(t - arrival);
              },
              onFinish() {},
            },
          );
        });
      }
      clock.run();
      return ttfts;
    };
    const started = performance.now();
    const a = run();
    const elapsed = performance.now() - started;
    expect(a).toHaveLength(10_000);
    expect(elapsed).toBeLessThan(10_000); // 10,000 requests, ~830 s of simulated time: well under a second here
    nextToken = 1;
    const b = run();
    nextToken = 1;
    const c = run();
    expect(c).toEqual(b);
  });
});

describe("LoRA adapters", () => {
  it("a batch holds at most maxLoras adapters: another waits (others pass it), and a load costs loraLoadMs once", () => {
    const { clock, engine } = setup({ maxLoras: 1, loraLoadMs: 40 });
    const o = engine.options;
    const lora = (name: string | undefined, targetTokens: number) =>
      submit(engine, {
        promptTokens: prompt(100),
        targetTokens,
        finishReason: "length",
        ...(name !== undefined ? { lora: name } : {}),
      });
    const a1 = lora("a", 20);
    const b = lora("b", 5);
    const base = lora(undefined, 5);
    const a2 = lora("a", 5);
    expect(engine.stats().runningLoras).toEqual(["a"]);
    expect(engine.stats().waitingLoras).toEqual(["b", "a"]);
    clock.run();
    // The first step loads "a": its first token pays the load.
    expect(a1.tokens[0]).toBeCloseTo(
      o.decodeBaseMs + o.prefillOverheadMs + 100 * o.prefillMsPerToken + o.loraLoadMs,
      9,
    );
    // The base-model request and the second "a" one passed "b", which waited until no "a" ran.
    expect(base.tokens[0] as number).toBeLessThan(b.tokens[0] as number);
    expect(a2.tokens[0] as number).toBeLessThan(b.tokens[0] as number);
    expect(b.tokens[0] as number).toBeGreaterThan(a1.tokens.at(-1) as number);
    expect(b.result?.completionTokens).toBe(5);
    expect(engine.stats().loraLoads).toBe(2); // "a" once (a2 found it loaded), then "b"
    expect(engine.stats()).toMatchObject({ runningLoras: [], waitingLoras: [] });
  });

  it("two slots run two adapters at once; an adapter still in its slot loads no more", () => {
    const { clock, engine } = setup({ maxLoras: 2, loraLoadMs: 40 });
    const spec = (lora: string) => ({
      promptTokens: prompt(50),
      targetTokens: 10,
      finishReason: "length" as const,
      lora,
    });
    const a = submit(engine, spec("a"));
    const b = submit(engine, spec("b"));
    clock.run();
    expect(b.tokens[0] as number).toBeLessThan(a.tokens.at(-1) as number);
    expect(engine.stats().loraLoads).toBe(2);
    const again = submit(engine, spec("a"));
    clock.run();
    expect(engine.stats().loraLoads).toBe(2);
    expect(again.result?.completionTokens).toBe(10);
  });
});
