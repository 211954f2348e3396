/**
 * Routing benchmark: the gateway's own router (server/routing) in front of 8 simulated vLLM engines
 * (sim/engine), all in virtual time, so that minutes of traffic run in seconds and every policy sees the
 * same arrivals. A simulated scraper copies each engine's queue and KV usage into the replica's signals
 * every 100 ms, as the gateway's scraper does; in-flight counts are kept as the relay keeps them.
 *
 * Workloads (seeded):
 *   sharegpt     no shared prefixes; prompt and output lengths log-normal (medians 200 and 150 tokens)
 *   prefix       after llm-d's prefix benchmark: 150 groups, each a 6,000-token shared prefix plus a
 *                1,200-token question, 128 output tokens, Poisson arrivals
 *   multiturn    chat sessions of 5 turns; each turn's prompt is the whole conversation so far plus a new
 *                question; 2 s think time between turns
 *
 * Each run first serves a warm-up (default 20% of the measured count) that the statistics leave out:
 * caches start empty, and a cold start is a one-off in production.
 *
 * With --gateways 1,3,5, each run is repeated with that many gateway replicas behind a random L4 spread:
 * each gateway has its own router (its own prefix index and round-robin turns) and its own in-flight
 * counts, all read the same scraped signals, and each request goes to a gateway picked at random (the
 * worst case for affinity: a session's turns land on any gateway).
 *
 *   npm run bench:routing [-- --workload prefix --policies round-robin,prefix-aware --qps 4,8 --gateways 1,3
 *     --seed 42 --json]
 */
import { parseArgs } from "node:util";
import { createRng } from "../common/random.js";
import { routingPolicySchema } from "../server/config/gateway-config.js";
import { createReplica, type Replica } from "../server/replicas/replica.js";
import { createRouter } from "../server/routing/router.js";
import type { ModelEntry } from "../server/routing/routing-table.js";
import { createVirtualClock } from "../sim/engine/clock.js";
import { createEngine, type Engine } from "../sim/engine/engine.js";
import { resolveEngineOptions } from "../sim/engine/engine-options.js";

const POLICIES = [
  "round-robin",
  "least-outstanding",
  "power-of-two-choices",
  "resource-aware",
  "prefix-aware",
] as const;
type Policy = (typeof POLICIES)[number];
type Workload = "sharegpt" | "prefix" | "multiturn";

const REPLICAS = 8;
const SCRAPE_MS = 100;

/** A log-normal sample with the given median and sigma, clipped. */
function logNormal(random: () => number, median: number, sigma: number, min: number, max: number) {
  const z = Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random());
  return Math.round(Math.min(max, Math.max(min, median * Math.exp(sigma * z))));
}

/** One request of a workload: its tokens, output length, session and when it may start. */
interface Job {
  prompt: number[];
  output: number;
  session: string;
}

/** The text the router hashes for a token sequence: 4 characters per token, so 64 tokens per block. */
function textOf(tokens: readonly number[]): string {
  let s = "";
  for (const t of tokens) s += (t % 1_679_616).toString(36).padStart(4, "0");
  return s;
}

interface RunResult {
  policy: Policy;
  qps: number;
  gateways: number;
  completed: number;
  ttftP50: number;
  ttftP99: number;
  /** Output tokens per second over the run. */
  throughput: number;
  /** Prompt tokens served from prefix caches / prompt tokens. */
  hitRate: number;
}

function percentile(values: number[], p: number) {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] as number;
}

/**
 * Runs one workload at one rate with one policy. The first `warmup` requests (caches start empty) are
 * served but left out of the statistics, the same for every policy.
 */
function run(
  workload: Workload,
  policy: Policy,
  qps: number,
  requests: number,
  warmup: number,
  seed: number,
  gatewayCount = 1,
): RunResult {
  const clock = createVirtualClock();
  const random = createRng(seed);
  const spread = createRng(seed + 2);
  const engineOptions = resolveEngineOptions({ maxModelLen: 16_384 });
  const engines: Engine[] = [];
  for (let i = 0; i < REPLICAS; i++) engines.push(createEngine(engineOptions, clock));
  /** One gateway replica: its own view of the replicas (in-flight counts) and its own router. */
  const gateways = Array.from({ length: gatewayCount }, (_, g) => {
    const replicas: Replica[] = [];
    for (let i = 0; i < REPLICAS; i++) {
      const r = createReplica("m", "v", `sim://${i}`, "bench");
      r.healthy = true;
      replicas.push(r);
    }
    const model: ModelEntry = {
      name: "m",
      maxContextTokens: 16_384,
      adapters: [],
      discoverAdapters: false,
      policy: routingPolicySchema.parse({
        algorithm: policy,
        sessionAffinity: policy === "prefix-aware" || policy === "resource-aware",
      }),
      versions: [{ name: "v", weight: 1, servedModelName: "m", replicas }],
    };
    const router = createRouter({
      now: () => clock.now(),
      random: createRng(seed + 1 + 1000 * g),
      prefixIndex: { blockChars: 256, maxBlocksPerRequest: 128, maxEntries: 200_000 },
    });
    return { replicas, model, router };
  });

  // Each gateway's scraper (all at the same instants: they read the same engines).
  let scraping = true;
  const scrape = () => {
    for (let i = 0; i < REPLICAS; i++) {
      const s = (engines[i] as Engine).stats();
      for (const gateway of gateways) {
        const r = gateway.replicas[i] as Replica;
        r.signals = {
          waiting: s.waiting,
          running: s.running,
          kvCacheUsage: s.kvCacheUsage,
          scrapedAt: clock.now(),
        };
        r.sentSinceScrape = 0;
      }
    }
    if (scraping) clock.setTimer(clock.now() + SCRAPE_MS, scrape);
  };
  scrape();

  const ttfts: number[] = [];
  let outputTokens = 0;
  let completed = 0;
  let firstArrival = Number.POSITIVE_INFINITY;
  let lastFinish = 0;
  let sent = 0;
  let hitsAtWarm = 0;
  let queriesAtWarm = 0;
  let nextToken = 1;
  const fresh = (n: number) => Array.from({ length: n }, () => nextToken++);

  const send = (job: Job, onDone: () => void) => {
    const arrival = clock.now();
    const measured = sent++ >= warmup;
    if (sent === warmup + 1) {
      hitsAtWarm = engines.reduce((s, e) => s + e.stats().prefixCacheHits, 0);
      queriesAtWarm = engines.reduce((s, e) => s + e.stats().prefixCacheQueries, 0);
    }
    if (measured) firstArrival = Math.min(firstArrival, arrival);
    const { router, model, replicas } = gateways[
      Math.floor(spread() * gateways.length)
    ] as (typeof gateways)[0];
    const input = {
      pinnedVersion: "",
      affinityKey: job.session,
      prefixHashes: router.hashPrompt(textOf(job.prompt)),
    };
    const version = router.pickVersion(model, "");
    const pick = router.pickReplica(model, version, input, new Set());
    if (pick === undefined) throw new Error("no replica");
    const index = replicas.indexOf(pick.replica);
    router.commit(pick.replica, input);
    pick.replica.inFlight++;
    pick.replica.sentSinceScrape++;
    (engines[index] as Engine).submit(
      { promptTokens: job.prompt, targetTokens: job.output, finishReason: "length" },
      {
        onToken(i, at) {
          if (!measured) return;
          if (i === 0) ttfts.push(at - arrival);
          outputTokens++;
        },
        onFinish(r) {
          pick.replica.inFlight--;
          if (measured) {
            completed++;
            lastFinish = Math.max(lastFinish, r.finishMs);
          }
          onDone();
        },
      },
    );
  };

  // Arrivals.
  let t = 0;
  const gap = () => (-Math.log(1 - random()) * 1000) / qps;
  if (workload === "sharegpt") {
    for (let i = 0; i < requests; i++) {
      t += gap();
      const job = {
        prompt: fresh(logNormal(random, 200, 1.0, 4, 4000)),
        output: logNormal(random, 150, 0.8, 1, 1000),
        session: "",
      };
      clock.setTimer(t, () => send(job, () => {}));
    }
  } else if (workload === "prefix") {
    const groups = Array.from({ length: 150 }, () => fresh(6000));
    for (let i = 0; i < requests; i++) {
      t += gap();
      const group = groups[Math.floor(random() * groups.length)] as number[];
      const job = { prompt: [...group, ...fresh(1200)], output: 128, session: "" };
      clock.setTimer(t, () => send(job, () => {}));
    }
  } else {
    // qps counts turns: sessions start at qps / TURNS per second.
    const TURNS = 5;
    const system = fresh(500);
    for (let s = 0; s < Math.ceil(requests / TURNS); s++) {
      t += gap() * TURNS;
      const session = `s${s}`;
      let history = [...system];
      let turn = 0;
      const next = () => {
        if (turn++ >= TURNS) return;
        const question = fresh(logNormal(random, 80, 0.6, 8, 600));
        const reply = fresh(logNormal(random, 150, 0.6, 8, 800));
        const prompt = [...history, ...question];
        history = [...prompt, ...reply];
        send({ prompt, output: reply.length, session }, () => {
          clock.setTimer(clock.now() + -Math.log(1 - random()) * 2000, next);
        });
      };
      clock.setTimer(t, next);
    }
  }
  // Stop scraping once everything has finished, so the event loop ends.
  const stopWhenDone = () => {
    const busy = engines.some((e) => e.stats().running + e.stats().waiting > 0);
    if (!busy && clock.now() > t) scraping = false;
    else clock.setTimer(clock.now() + 1000, stopWhenDone);
  };
  clock.setTimer(t + 1000, stopWhenDone);
  clock.run();

  const hits = engines.reduce((s, e) => s + e.stats().prefixCacheHits, 0) - hitsAtWarm;
  const queries = engines.reduce((s, e) => s + e.stats().prefixCacheQueries, 0) - queriesAtWarm;
  return {
    policy,
    qps,
    gateways: gatewayCount,
    completed,
    ttftP50: percentile(ttfts, 50),
    ttftP99: percentile(ttfts, 99),
    throughput: outputTokens / ((lastFinish - firstArrival) / 1000),
    hitRate: queries === 0 ? 0 : hits / queries,
  };
}

const DEFAULT_QPS: Record<Workload, number[]> = {
  sharegpt: [20, 40, 60, 80, 100],
  prefix: [4, 8, 12, 16, 24, 32],
  multiturn: [10, 20, 40, 60, 80],
};
const DEFAULT_REQUESTS: Record<Workload, number> = { sharegpt: 4000, prefix: 2000, multiturn: 3000 };

function main() {
  const { values } = parseArgs({
    options: {
      workload: { type: "string", multiple: true },
      policies: { type: "string" },
      qps: { type: "string" },
      requests: { type: "string" },
      warmup: { type: "string" },
      seed: { type: "string", default: "42" },
      gateways: { type: "string", default: "1" },
      json: { type: "boolean", default: false },
    },
  });
  const workloads = (values.workload ?? ["sharegpt", "prefix", "multiturn"]) as Workload[];
  const policies = (values.policies?.split(",") ?? [...POLICIES]) as Policy[];
  const all: Record<string, RunResult[]> = {};
  for (const workload of workloads) {
    const rates = values.qps?.split(",").map(Number) ?? DEFAULT_QPS[workload];
    const requests = Number(values.requests ?? DEFAULT_REQUESTS[workload]);
    const warmup = Number(values.warmup ?? Math.round(requests * 0.2));
    const results: RunResult[] = [];
    const gatewayCounts = values.gateways.split(",").map(Number);
    for (const qps of rates) {
      for (const policy of policies) {
        for (const gateways of gatewayCounts) {
          const started = performance.now();
          results.push(run(workload, policy, qps, requests + warmup, warmup, Number(values.seed), gateways));
          process.stderr.write(
            `${workload} ${policy} qps=${qps} gateways=${gateways}: ${(performance.now() - started).toFixed(0)} ms\n`,
          );
        }
      }
    }
    const many = gatewayCounts.length > 1 || gatewayCounts[0] !== 1;
    all[workload] = results;
    if (!values.json) {
      console.log(
        `\n### ${workload} (${requests} measured requests after ${warmup} warm-up, ${REPLICAS} replicas)\n`,
      );
      console.log(
        `| QPS | policy |${many ? " gateways |" : ""} TTFT p50 (ms) | TTFT p99 (ms) | output tok/s | prefix-cache hit rate |`,
      );
      console.log(`|---:|---|${many ? "---:|" : ""}---:|---:|---:|---:|`);
      for (const r of results) {
        console.log(
          `| ${r.qps} | ${r.policy} |${many ? ` ${r.gateways} |` : ""} ${r.ttftP50.toFixed(0)} | ${r.ttftP99.toFixed(0)} | ${r.throughput.toFixed(0)} | ${(r.hitRate * 100).toFixed(1)}% |`,
        );
      }
    }
  }
  if (values.json) console.log(JSON.stringify(all));
}

main();
