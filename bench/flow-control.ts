/**
 * Flow-control benchmark: the gateway's router and flow controller (server/routing, server/flow) in front
 * of 8 simulated vLLM engines (sim/engine), in virtual time, at 0.8x, 1.5x and 3x the fleet's capacity,
 * with and without flow control (without: every request goes straight to a replica, as before).
 *
 * Traffic (seeded): Poisson arrivals; prompts and outputs log-normal (medians 200 and 150 tokens, as
 * bench/routing.ts's sharegpt); 10% critical, 60% standard, 30% sheddable; two tenants of equal weight,
 * one sending ten times as much as the other. Every client gives up at its deadline (120 s after it sent
 * the request): a request still waiting or generating then is cancelled, as a real client's would be.
 * The fleet's capacity (output tokens per second) is measured first, by saturating it.
 *
 * Reported per load and mode: critical TTFT p99; goodput (output tokens per second of requests that
 * finished within their deadline) as a share of capacity; tokens per second per tenant; Jain's fairness
 * index over the tenants' goodput, each divided by its max-min fair share of the goodput (1 = fair);
 * requests shed by class; the longest wait in the gateway's queue.
 *
 *   npm run bench:flow [-- --seconds 60 --loads 0.8,1.5,3 --json]
 */
import { parseArgs } from "node:util";
import { createRng } from "../common/random.js";
import { type FlowConfig, flowSchema, routingPolicySchema } from "../server/config/gateway-config.js";
import { createFlowController, type FlowTicket } from "../server/flow/flow-control.js";
import { createReplica, type Replica } from "../server/replicas/replica.js";
import type { Priority } from "../server/request/inference-request.js";
import { createRouter } from "../server/routing/router.js";
import type { ModelEntry } from "../server/routing/routing-table.js";
import { createVirtualClock, type VirtualClock } from "../sim/engine/clock.js";
import { createEngine, type Engine, type SequenceHandle } from "../sim/engine/engine.js";
import { resolveEngineOptions } from "../sim/engine/engine-options.js";

const REPLICAS = 8;
const SCRAPE_MS = 100;
const DEADLINE_MS = 120_000;
/** The gateway's defaults (server/config/gateway-config.ts), with a queue long enough for 3x. */
const FLOW: FlowConfig = { ...flowSchema.parse({}), maxQueued: 10_000 };
const CLASSES: [Priority, number][] = [
  ["critical", 0.1],
  ["standard", 0.6],
  ["sheddable", 0.3],
];
const TENANTS: [string, number][] = [
  ["big", 10 / 11],
  ["small", 1 / 11],
];

function logNormal(random: () => number, median: number, sigma: number, min: number, max: number) {
  const z = Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random());
  return Math.round(Math.min(max, Math.max(min, median * Math.exp(sigma * z))));
}
const pick = <T>(random: () => number, weighted: [T, number][]): T => {
  let x = random();
  for (const [v, w] of weighted) {
    x -= w;
    if (x < 0) return v;
  }
  return (weighted.at(-1) as [T, number])[0];
};
function percentile(values: number[], p: number) {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] as number;
}

interface RunResult {
  /** Output tokens per second generated while arrivals went on (after a 5 s warm-up), whoever got them. */
  generated: number;
  load: number;
  flow: boolean;
  criticalTtftP99: number;
  goodput: number;
  perTenant: Record<string, number>;
  fairness: number;
  shed: Record<Priority, number>;
  longestWaitMs: number;
  completed: number;
}

/** Runs the clock to the end, letting each batch of timers' promise continuations run before the next. */
async function drive(clock: VirtualClock): Promise<void> {
  for (;;) {
    // Continuations of promises settled by the last batch (flow control's grants) may set timers.
    await Promise.resolve();
    await Promise.resolve();
    const next = clock.nextAt();
    if (next === undefined) return;
    clock.run(next);
  }
}

async function run(
  load: number,
  withFlow: boolean,
  seconds: number,
  capacity: number,
  seed: number,
  deadlineMs = DEADLINE_MS,
  flowConfig: FlowConfig = FLOW,
): Promise<RunResult> {
  const clock = createVirtualClock();
  const random = createRng(seed);
  const options = resolveEngineOptions({});
  const engines: Engine[] = [];
  const replicas: Replica[] = [];
  for (let i = 0; i < REPLICAS; i++) {
    engines.push(createEngine(options, clock));
    const r = createReplica("m", "v", `sim://${i}`, "bench");
    r.healthy = true;
    replicas.push(r);
  }
  const model: ModelEntry = {
    name: "m",
    maxContextTokens: 8192,
    adapters: [],
    discoverAdapters: false,
    policy: routingPolicySchema.parse({ algorithm: "resource-aware" }),
    versions: [{ name: "v", weight: 1, servedModelName: "m", replicas }],
  };
  const router = createRouter({
    now: () => clock.now(),
    random: createRng(seed + 1),
    prefixIndex: { blockChars: 256, maxBlocksPerRequest: 128, maxEntries: 10_000 },
  });
  const shed: Record<Priority, number> = { critical: 0, standard: 0, sheddable: 0 };
  let longestWaitMs = 0;
  const flow = createFlowController({
    now: () => clock.now(),
    setTimer: (at, fn) => clock.setTimer(at, fn),
    model: () => model,
    limits: () => flowConfig,
    hooks: {
      dispatched: (_m, _c, _t, waitMs) => {
        longestWaitMs = Math.max(longestWaitMs, waitMs);
      },
    },
  });
  let arrivalsDone = false;
  const scrape = () => {
    for (let i = 0; i < REPLICAS; i++) {
      const s = (engines[i] as Engine).stats();
      const r = replicas[i] as Replica;
      r.signals = {
        waiting: s.waiting,
        running: s.running,
        kvCacheUsage: s.kvCacheUsage,
        scrapedAt: clock.now(),
      };
      r.sentSinceScrape = 0;
    }
    flow.notify("m");
    const busy = engines.some((e) => e.stats().running + e.stats().waiting > 0);
    if (!arrivalsDone || busy) clock.setTimer(clock.now() + SCRAPE_MS, scrape);
  };
  scrape();

  const criticalTtfts: number[] = [];
  const good: Record<string, number> = { big: 0, small: 0 };
  const offered: Record<string, number> = { big: 0, small: 0 };
  let completed = 0;
  let nextToken = 1;
  let generated = 0;
  const WARMUP_MS = 5000;

  const send = (criticality: Priority, tenant: string, prompt: number, output: number) => {
    const sentAt = clock.now();
    offered[tenant] = (offered[tenant] ?? 0) + output;
    const control = new AbortController();
    let handle: SequenceHandle | undefined;
    let ticket: FlowTicket | undefined;
    let ended = false;
    const giveUp = clock.setTimer(sentAt + deadlineMs, () => {
      if (ended) return;
      ended = true;
      control.abort(new Error("deadline"));
      handle?.abort();
    });
    const start = (t: FlowTicket | undefined) => {
      ticket = t;
      if (ended) return ticket?.release();
      const input = {
        pinnedVersion: "",
        affinityKey: "",
        prefixHashes: [],
        ...(withFlow ? { maxInFlight: flowConfig.maxInFlightPerReplica } : {}),
      };
      const version = router.pickVersion(model, "");
      const chosen = router.pickReplica(model, version, input, new Set());
      if (chosen === undefined) throw new Error("no replica");
      const replica = chosen.replica;
      replica.inFlight++;
      replica.sentSinceScrape++;
      replica.prefillTokens += prompt;
      let prefilling = true;
      const prefilled = () => {
        if (prefilling) replica.prefillTokens -= prompt;
        prefilling = false;
        if (withFlow) flow.notify("m");
      };
      const tokens = Array.from({ length: prompt }, () => nextToken++);
      let producedInWindow = 0;
      handle = (engines[replicas.indexOf(replica)] as Engine).submit(
        { promptTokens: tokens, targetTokens: output, finishReason: "length" },
        {
          onToken(i, at) {
            if (at >= WARMUP_MS && at <= seconds * 1000) {
              generated++;
              producedInWindow++;
            }
            if (i === 0) prefilled();
            if (i === 0 && criticality === "critical") criticalTtfts.push(at - sentAt);
          },
          onFinish(r) {
            prefilled();
            replica.inFlight--;
            ticket?.release();
            if (r.reason !== "abort" && r.finishMs - sentAt <= deadlineMs) {
              ended = true;
              giveUp();
              completed++;
              good[tenant] = (good[tenant] ?? 0) + producedInWindow;
            }
          },
        },
      );
    };
    if (!withFlow) return start(undefined);
    try {
      const granted = flow.acquire({
        model,
        criticality,
        tenant,
        weight: 1,
        cost: prompt + output,
        bytes: prompt * 4,
        deadlineAt: sentAt + deadlineMs,
        signal: control.signal,
      });
      if ("then" in granted)
        granted.then(start, () => {
          if (!control.signal.aborted) shed[criticality]++;
          ended = true;
          giveUp();
        });
      else start(granted);
    } catch {
      shed[criticality]++;
      ended = true;
      giveUp();
    }
  };

  // Arrivals: the rate that offers `load` times the capacity, in output tokens per second.
  const meanOutput = 150 * Math.exp(0.8 ** 2 / 2);
  const qps = (load * capacity) / meanOutput;
  let t = 0;
  while (t < seconds * 1000) {
    t += (-Math.log(1 - random()) * 1000) / qps;
    const criticality = pick(random, CLASSES);
    const tenant = pick(random, TENANTS);
    const prompt = logNormal(random, 200, 1.0, 4, 4000);
    const output = logNormal(random, 150, 0.8, 1, 1000);
    clock.setTimer(t, () => send(criticality, tenant, prompt, output));
  }
  clock.setTimer(t, () => {
    arrivalsDone = true;
  });
  await drive(clock);

  // Goodput and shares count tokens produced between the warm-up and the end of arrivals.
  const duration = seconds - WARMUP_MS / 1000;
  const goodput = (good.big + good.small) / duration;
  // Max-min fair shares of the goodput achieved, given what each tenant offered.
  const total = good.big + good.small;
  const smallFair = Math.min(offered.small, total / 2);
  const fair: Record<string, number> = { small: smallFair, big: Math.min(offered.big, total - smallFair) };
  const x = ["big", "small"].map((k) => (good[k] ?? 0) / Math.max(1, fair[k] ?? 1));
  const fairness = (x[0] + x[1]) ** 2 / (2 * (x[0] ** 2 + x[1] ** 2));
  return {
    generated: generated / (seconds - WARMUP_MS / 1000),
    load,
    flow: withFlow,
    criticalTtftP99: percentile(criticalTtfts, 99),
    goodput: goodput / capacity,
    perTenant: { big: good.big / duration, small: good.small / duration },
    fairness,
    shed,
    longestWaitMs,
    completed,
  };
}

/**
 * The fleet's capacity for this traffic: the most output tokens per second it generates while kept
 * saturated (offered twice a generous guess, clients that never give up, after a warm-up), over batch
 * bounds from 64 to the engines' own limit (--max-num-seqs): its best operating point, whatever the
 * gateway's setting.
 */
async function measureCapacity(seed: number, seconds: number): Promise<number> {
  const guess = REPLICAS * 3000;
  let best = 0;
  for (const bound of [64, 128, 192, resolveEngineOptions({}).maxNumSeqs]) {
    const flow = { ...FLOW, maxInFlightPerReplica: bound, criticalReserve: 0 };
    const r = await run(2, true, seconds, guess, seed, Number.POSITIVE_INFINITY, flow);
    process.stderr.write(
      `capacity at ${bound} in flight per replica: ${r.generated.toFixed(0)} output tokens/s\n`,
    );
    best = Math.max(best, r.generated);
  }
  return best;
}

async function main() {
  const { values } = parseArgs({
    options: {
      seconds: { type: "string", default: "60" },
      loads: { type: "string", default: "0.8,1.5,3" },
      seed: { type: "string", default: "42" },
      json: { type: "boolean", default: false },
    },
  });
  const seed = Number(values.seed);
  const seconds = Number(values.seconds);
  const capacity = await measureCapacity(seed, seconds);
  process.stderr.write(`capacity: ${capacity.toFixed(0)} output tokens/s (${REPLICAS} replicas)\n`);
  const results: RunResult[] = [];
  for (const load of values.loads.split(",").map(Number)) {
    for (const withFlow of [false, true]) {
      const started = performance.now();
      results.push(await run(load, withFlow, seconds, capacity, seed));
      process.stderr.write(`load ${load} flow=${withFlow}: ${(performance.now() - started).toFixed(0)} ms\n`);
    }
  }
  if (values.json) {
    console.log(JSON.stringify({ capacity, results }));
    return;
  }
  console.log(
    `\nfleet capacity ${capacity.toFixed(0)} output tokens/s; ${seconds} s of arrivals per run; deadline ${DEADLINE_MS / 1000} s\n`,
  );
  console.log(
    "| load | flow control | critical TTFT p99 (ms) | goodput / capacity | tok/s big / small | fairness | shed critical / standard / sheddable | longest wait (s) |",
  );
  console.log("|---:|---|---:|---:|---:|---:|---:|---:|");
  for (const r of results) {
    console.log(
      `| ${r.load}x | ${r.flow ? "on" : "off"} | ${r.criticalTtftP99.toFixed(0)} | ${(r.goodput * 100).toFixed(1)}% | ${r.perTenant.big?.toFixed(0)} / ${r.perTenant.small?.toFixed(0)} | ${r.fairness.toFixed(3)} | ${r.shed.critical} / ${r.shed.standard} / ${r.shed.sheddable} | ${(r.longestWaitMs / 1000).toFixed(1)} |`,
    );
  }
}

main();
