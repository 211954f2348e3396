/**
 * One code path, two clocks: the same fixed workload run in real time and in virtual time gives the same
 * per-request time to first token and end-to-end latency (within 5%).
 */
import { expect, it } from "vitest";
import { type Clock, createRealClock, createVirtualClock } from "../../../sim/engine/clock.js";
import { createEngine } from "../../../sim/engine/engine.js";
import { resolveEngineOptions } from "../../../sim/engine/engine-options.js";

interface Timing {
  ttft: number;
  e2e: number;
}

/** 12 requests, 25 ms apart, 400 to 1,500-token prompts (some sharing a prefix), 10 to 40 tokens out. */
function runWorkload(clock: Clock, onDone: () => void): Timing[] {
  const engine = createEngine(resolveEngineOptions(), clock);
  const timings: Timing[] = [];
  const shared = Array.from({ length: 512 }, (_, i) => 1_000_000 + i);
  let remaining = 12;
  for (let i = 0; i < 12; i++) {
    const prompt = [
      ...(i % 3 === 0 ? shared : []),
      ...Array.from({ length: 400 + 90 * i }, (_, j) => i * 10_000 + j),
    ];
    const start = clock.now() + 25 * i;
    clock.setTimer(start, () => {
      const arrival = clock.now();
      let first = 0;
      engine.submit(
        { promptTokens: prompt, targetTokens: 10 + ((i * 7) % 31), finishReason: "length" },
        {
          onToken: (index) => {
            if (index === 0) first = clock.now() - arrival;
          },
          onFinish: () => {
            timings[i] = { ttft: first, e2e: clock.now() - arrival };
            if (--remaining === 0) onDone();
          },
        },
      );
    });
  }
  return timings;
}

it("real-time and virtual-time runs agree within 5% per request", async () => {
  const virtualClock = createVirtualClock();
  const virtual = runWorkload(virtualClock, () => {});
  virtualClock.run();

  const real = await new Promise<Timing[]>((resolve) => {
    const timings = runWorkload(createRealClock(), () => resolve(timings));
  });

  expect(virtual).toHaveLength(12);
  const worst = Math.max(
    ...real.map((r, i) => Math.abs(r.e2e - (virtual[i] as Timing).e2e) / (virtual[i] as Timing).e2e),
  );
  console.log(`worst e2e deviation: ${(worst * 100).toFixed(2)}%`);
  for (let i = 0; i < 12; i++) {
    const v = virtual[i] as Timing;
    const r = real[i] as Timing;
    expect(Math.abs(r.ttft - v.ttft) / v.ttft, `request ${i} TTFT ${r.ttft} vs ${v.ttft}`).toBeLessThan(0.05);
    expect(Math.abs(r.e2e - v.e2e) / v.e2e, `request ${i} e2e ${r.e2e} vs ${v.e2e}`).toBeLessThan(0.05);
  }
});
