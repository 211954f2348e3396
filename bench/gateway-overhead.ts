/**
 * Gateway overhead benchmark: what the gateway adds to time to first token and inter-token latency, and
 * its CPU cost per 1,000 relayed tokens, at 1, 64, 256 and 1,024 concurrent streams.
 *
 * Three processes on this machine: `kinfer-sim` (4 replicas, max_num_seqs 256), `kinfer-gateway` in front
 * of them, and this client, which runs a closed loop of streaming OpenAI completions either straight to
 * the replicas or through the gateway, round-robin over the replicas in both modes. Output lengths are
 * spread over 32-96 tokens (64 on average; --tokens 64 for all alike): with one length for all, the
 * streams of a closed loop finish in the same engine step and come back at once, bursts of hundreds of
 * new requests that made the run-to-run spread of the figures (±5 ms) larger than what is measured.
 * Routing is round-robin in both modes because least-outstanding sends a closed loop's next request to
 * the replica whose stream just finished, which has just started its next step: the request waits a
 * whole step there (+9 ms TTFT p50 at 256 streams), an effect of routing, not of the gateway's cost.
 *
 * The engine's own timing varies by up to a whole batch step, far more than the gateway costs, so TTFT
 * is measured per request outside the engine: (first token at the client - request sent) - (first token
 * written by the replica - request received by the replica), with the replica's times from its
 * /sim/traces. The gateway's added TTFT is that figure through the gateway minus the same figure direct.
 * Inter-token latency is compared as seen by the client. CPU comes from the gateway's own
 * process_cpu_seconds_total; its GC and event-loop figures (prom-client's defaults) go to stderr.
 *
 * "Added in the path" is measured through the gateway alone, as proxies report their overhead (Envoy's
 * x-envoy-upstream-service-time): the client's time to first token minus the gateway's Server-Timing
 * "upstream" (request sent to the replica to first token read). It holds the two hops to and from the
 * gateway, the gateway's own work and the client's own delays in reading (which the direct path has too),
 * and none of the replica's.
 *
 * Placement: with 2 or more CPUs, the gateway is pinned to CPU 1 and the simulator and this client to
 * CPU 0 (taskset), in both modes, as a gateway in production has cores of its own; otherwise the
 * gateway's CPU use would be charged to the replicas' and the client's timings.
 *
 * With --rounds N, each level runs N direct and N gateway phases of --seconds each, alternating, and the
 * figures come from all of them pooled: slow drifts of this VM's speed then weigh on both modes alike, and
 * a p99 rests on N times as many requests (one 15-second round at 256 streams has ~1,700). Each round's
 * own added TTFT p50 and p99 go to stderr. BENCHMARKS.md uses --rounds 8.
 *
 * With --together, the direct and the gateway loads run at the same time (each with the given number
 * of streams), so that both see the same engine batches; at 256 streams that saturates CPU 0.
 *
 * KINFER_BENCH_PROFILE=DIR writes a CPU profile of the gateway there; KINFER_BENCH_GATEWAY_FLAGS adds node
 * flags to the gateway (e.g. --trace-gc, whose lines go to stderr).
 *
 *   npm run bench:overhead [-- --levels 1,64,256,1024 --seconds 15 --rounds 8 --tokens 32-96 --together]
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { availableParallelism, tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";
import { Agent, request } from "undici";

const root = new URL("..", import.meta.url).pathname;
const wallClock = () => performance.timeOrigin + performance.now();

const PIN = availableParallelism() >= 2;
const TOKENS = 'kinfer_gateway_tokens_total{model="m",version="stable",kind="completion"}';

/** Starts `node --import tsx ARGS` on `cpu` (when pinning); resolves when a line matches `ready`. */
function startProcess(
  args: string[],
  ready: RegExp,
  cpu: number,
): Promise<{ child: ChildProcess; lines: string[] }> {
  const profile = process.env.KINFER_BENCH_PROFILE;
  const prof = profile && args[0] === "server/main.ts" ? ["--cpu-prof", "--cpu-prof-dir", profile] : [];
  // KINFER_BENCH_GATEWAY_FLAGS: extra node flags for the gateway (e.g. --trace-gc, heap sizes).
  const flags = args[0] === "server/main.ts" ? (process.env.KINFER_BENCH_GATEWAY_FLAGS ?? "").split(" ") : [];
  const node = [process.execPath, ...prof, ...flags.filter(Boolean), "--import", "tsx", ...args];
  const [cmd, ...rest] = PIN ? ["taskset", "-c", String(cpu), ...node] : node;
  const child = spawn(cmd as string, rest, { cwd: root, stdio: ["ignore", "pipe", "inherit"] });
  const lines: string[] = [];
  return new Promise((resolve, reject) => {
    const rl = createInterface({ input: child.stdout as NodeJS.ReadableStream });
    rl.on("line", (line) => {
      if (line.includes(" ms: "))
        process.stderr.write(`${line}\n`); // --trace-gc
      else lines.push(line);
      if (ready.test(line)) resolve({ child, lines });
    });
    child.once("exit", (code) => reject(new Error(`${args[0]} exited with ${code}`)));
  });
}

interface Sample {
  id: string;
  sentAt: number;
  firstAt: number;
  gaps: number[];
  tokens: number;
  /** Through the gateway: its Server-Timing "upstream" (request sent to the replica to first token read). */
  upstreamMs: number | undefined;
  /** Through the gateway: its Server-Timing "gateway" (accepted to request sent to the replica). */
  gatewayMs: number | undefined;
}

/** One streaming completion; returns its timing, or undefined if it failed. */
async function oneStream(
  agent: Agent,
  url: string,
  i: number,
  maxTokens: number,
): Promise<Sample | undefined> {
  const sentAt = wallClock();
  const res = await request(`${url}/v1/completions`, {
    method: "POST",
    dispatcher: agent,
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      model: "m",
      prompt: `Request ${i}: tell me about batching.`,
      max_tokens: maxTokens,
      stream: true,
    }),
  });
  if (res.statusCode !== 200) {
    await res.body.dump();
    return undefined;
  }
  const id = String(res.headers["x-request-id"]);
  const timing = /upstream;dur=([\d.]+)/.exec(String(res.headers["server-timing"] ?? ""));
  const upstreamMs = timing === null ? undefined : Number(timing[1]);
  const own = /gateway;dur=([\d.]+)/.exec(String(res.headers["server-timing"] ?? ""));
  const gatewayMs = own === null ? undefined : Number(own[1]);
  let firstAt = 0;
  let last = 0;
  let tokens = 0;
  const gaps: number[] = [];
  let buffered = "";
  for await (const chunk of res.body) {
    const now = wallClock();
    buffered += (chunk as Buffer).toString("utf8");
    let end = buffered.indexOf("\n\n");
    while (end !== -1) {
      const event = buffered.slice(0, end);
      buffered = buffered.slice(end + 2);
      end = buffered.indexOf("\n\n");
      if (!event.includes('"text":"') || event.includes('"text":""')) continue;
      tokens++;
      if (firstAt === 0) firstAt = now;
      else gaps.push(now - last);
      last = now;
    }
  }
  return { id, sentAt, firstAt, gaps, tokens, upstreamMs, gatewayMs };
}

/** The gateway's request log: when each request was accepted (wall clock, ms) and its TTFT there. */
function requestLog(lines: readonly string[]): Map<string, { startedAt: number; ttftMs: number }> {
  const out = new Map<string, { startedAt: number; ttftMs: number }>();
  for (const line of lines) {
    if (!line.includes('"startedAt"')) continue;
    const j = JSON.parse(line) as { requestId: string; startedAt: number; ttftMs?: number };
    if (j.ttftMs !== undefined) out.set(j.requestId, { startedAt: j.startedAt, ttftMs: j.ttftMs });
  }
  return out;
}

/**
 * One row of the time-to-first-token breakdown, each leg from the timestamps of the process at each end
 * (one wall clock on one machine): the client's, the replicas' /sim/traces, the gateway's request log and
 * its Server-Timing.
 */
function legs(
  streams: number,
  direct: Sample[],
  via: Sample[],
  traces: Map<string, [number, number]>,
  log: Map<string, { startedAt: number; ttftMs: number }>,
): string {
  const cell = (xs: number[]) => `${pct(xs, 50).toFixed(2)} (${pct(xs, 99).toFixed(2)})`;
  const d = direct.flatMap((s) => {
    const t = traces.get(s.id);
    return t === undefined ? [] : [[t[0] - s.sentAt, t[1] - t[0], s.firstAt - t[1]]];
  });
  const v = via.flatMap((s) => {
    const t = traces.get(s.id);
    const g = log.get(s.id);
    if (t === undefined || g === undefined || s.upstreamMs === undefined || s.gatewayMs === undefined)
      return [];
    const sent = g.startedAt + s.gatewayMs; // request sent to the replica
    const read = sent + s.upstreamMs; // first token read from the replica
    const relayed = g.startedAt + g.ttftMs; // first token handed to the client's stream
    return [
      [
        g.startedAt - s.sentAt,
        s.gatewayMs + (relayed - read),
        t[0] - sent,
        t[1] - t[0],
        read - t[1],
        s.firstAt - relayed,
      ],
    ];
  });
  const col = (rows: number[][], i: number) => rows.map((r) => r[i] as number);
  return `| ${streams} | ${[0, 1, 2].map((i) => cell(col(d, i))).join(" | ")} | ${[0, 1, 2, 3, 4, 5].map((i) => cell(col(v, i))).join(" | ")} |`;
}

function pct(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? Number.NaN;
}

async function metric(url: string, name: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  return text
    .split("\n")
    .filter((l) => l.startsWith(name) && !l.startsWith("#"))
    .reduce((sum, l) => sum + Number(l.split(" ").at(-1)), 0);
}

async function traces(replicas: readonly string[]): Promise<Map<string, [number, number]>> {
  const all = new Map<string, [number, number]>();
  for (const r of replicas) {
    const json = (await (await fetch(`${r}/sim/traces`)).json()) as Record<string, [number, number]>;
    for (const [id, t] of Object.entries(json)) all.set(id, t);
  }
  return all;
}

/** Output lengths: "64" for all alike, "32-96" for lengths spread evenly over the range. */
function outputLengths(spec: string): (i: number) => number {
  const m = /^(\d+)(?:-(\d+))?$/.exec(spec);
  if (m === null) throw new Error(`--tokens: expected N or MIN-MAX, got ${spec}`);
  const lo = Number(m[1]);
  const span = Number(m[2] ?? m[1]) - lo + 1;
  if (span < 1) throw new Error(`--tokens: ${spec} is an empty range`);
  // A fixed scramble of the request number, so both modes ask for the same sequence of lengths.
  return (i) => lo + ((Math.imul(i + 1, 2654435761) >>> 0) % span);
}

/** Runs `concurrency` closed-loop clients for `seconds` (after a 1 s warm-up) against `targets`. */
async function load(
  targets: readonly string[],
  concurrency: number,
  seconds: number,
  length: (i: number) => number,
) {
  const agent = new Agent({ connections: null, keepAliveTimeout: 60_000, headersTimeout: 0, bodyTimeout: 0 });
  const samples: Sample[] = [];
  let failures = 0;
  let n = 0;
  const warmUntil = performance.now() + 1000;
  const until = warmUntil + seconds * 1000;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() < until) {
        const i = n++;
        const url = targets[i % targets.length] as string; // round-robin, as the gateway routes here
        const s = await oneStream(agent, url, i, length(i)).catch(() => undefined);
        if (s === undefined) failures++;
        else if (s.sentAt > performance.timeOrigin + warmUntil) samples.push(s);
      }
    }),
  );
  await agent.close();
  return { samples, failures };
}

async function main() {
  const { values } = parseArgs({
    options: {
      levels: { type: "string", default: "1,64,256,1024" },
      seconds: { type: "string", default: "10" },
      together: { type: "boolean", default: false },
      rounds: { type: "string", default: "1" },
      tokens: { type: "string", default: "32-96" },
    },
  });
  const length = outputLengths(values.tokens);
  const rounds = Math.max(1, Number(values.rounds));
  const levels = values.levels.split(",").map(Number);
  const seconds = Number(values.seconds);
  if (PIN) execFileSync("taskset", ["-p", "-c", "0", String(process.pid)], { stdio: "ignore" });

  const sim = await startProcess(
    [
      "sim/main.ts",
      "--model",
      "m",
      "--replicas",
      "4",
      "--base-port",
      "0",
      "--max-num-seqs",
      "256",
      "--mean-output-tokens",
      "100000",
    ],
    /^kinfer-sim: ready$/,
    0,
  );
  const replicas = sim.lines
    .map((l) => /at (http\S+)$/.exec(l)?.[1])
    .filter((u): u is string => u !== undefined);
  const dir = mkdtempSync(join(tmpdir(), "kinfer-bench-"));
  const configFile = join(dir, "gateway.yaml");
  writeFileSync(
    configFile,
    `listen: {host: 127.0.0.1, port: 0}\nlogLevel: info\nrouting: {algorithm: round-robin}\nmodels:\n  - name: m\n    versions:\n      - name: stable\n        replicas: [${replicas.join(", ")}]\n`,
  );
  const gw = await startProcess(["server/main.ts", "--config", configFile], /^kinfer-gateway: serving/, 1);
  const gatewayUrl = /at (http\S+)$/.exec(
    gw.lines.find((l) => l.startsWith("kinfer-gateway: serving")) ?? "",
  )?.[1] as string;
  await new Promise((r) => setTimeout(r, 500));

  const rows: string[] = [];
  const legRows: string[] = [];
  for (const concurrency of levels) {
    const base = { samples: [] as Sample[], failures: 0 };
    const via = { samples: [] as Sample[], failures: 0 };
    const phases: { direct: Sample[]; via: Sample[] }[] = [];
    let cpu = 0;
    let tokens = 0;
    for (let round = 0; round < rounds; round++) {
      const direct = values.together ? undefined : await load(replicas, concurrency, seconds, length);
      const cpuBefore = await metric(gatewayUrl, "process_cpu_seconds_total");
      const tokensBefore = await metric(gatewayUrl, TOKENS);
      const [gateway, directTogether] = await Promise.all([
        load([gatewayUrl], concurrency, seconds, length),
        values.together ? load(replicas, concurrency, seconds, length) : undefined,
      ]);
      cpu += (await metric(gatewayUrl, "process_cpu_seconds_total")) - cpuBefore;
      tokens += (await metric(gatewayUrl, TOKENS)) - tokensBefore;
      const baseline = (direct ?? directTogether) as Awaited<ReturnType<typeof load>>;
      base.samples.push(...baseline.samples);
      base.failures += baseline.failures;
      via.samples.push(...gateway.samples);
      via.failures += gateway.failures;
      phases.push({ direct: baseline.samples, via: gateway.samples });
    }
    const t = await traces(replicas);
    /** Time outside the engine before the first token, per request. */
    const outside = (samples: Sample[]) =>
      samples.flatMap((s) => {
        const trace = t.get(s.id);
        return trace === undefined ? [] : [s.firstAt - s.sentAt - (trace[1] - trace[0])];
      });
    const oDirect = outside(base.samples);
    const oVia = outside(via.samples);
    const itlDirect = base.samples.flatMap((s) => s.gaps);
    const itlVia = via.samples.flatMap((s) => s.gaps);
    const ttft = (xs: Sample[]) => xs.map((s) => s.firstAt - s.sentAt);
    // In the path: what the client waited minus what the gateway waited for the replica.
    const inPath = via.samples.flatMap((s) =>
      s.upstreamMs === undefined ? [] : [s.firstAt - s.sentAt - s.upstreamMs],
    );
    rows.push(
      `| ${concurrency} | ${pct(ttft(base.samples), 50).toFixed(1)} / ${pct(ttft(via.samples), 50).toFixed(1)} | ` +
        `${pct(ttft(base.samples), 99).toFixed(1)} / ${pct(ttft(via.samples), 99).toFixed(1)} | ` +
        `**${(pct(oVia, 50) - pct(oDirect, 50)).toFixed(2)}** | **${(pct(oVia, 99) - pct(oDirect, 99)).toFixed(2)}** | ` +
        `**${pct(inPath, 50).toFixed(2)}** / **${pct(inPath, 99).toFixed(2)}** | ` +
        `${pct(itlDirect, 50).toFixed(1)} / ${pct(itlVia, 50).toFixed(1)} | ${pct(itlDirect, 99).toFixed(1)} / ${pct(itlVia, 99).toFixed(1)} | ` +
        `${((cpu / tokens) * 1000).toFixed(3)} | ${via.samples.length} | ${base.failures + via.failures} |`,
    );
    legRows.push(legs(concurrency, base.samples, via.samples, t, requestLog(gw.lines)));
    gw.lines.length = 0; // read: the next level's log lines only
    const added = (p: number) =>
      phases.map((ph) => (pct(outside(ph.via), p) - pct(outside(ph.direct), p)).toFixed(2)).join(", ");
    process.stderr.write(
      `${concurrency} streams${values.together ? " (together)" : ""} done (${oVia.length}/${via.samples.length} paired)` +
        `${rounds > 1 ? `; added TTFT by round: p50 ${added(50)} ms, p99 ${added(99)} ms` : ""}\n`,
    );
    // The gateway's pauses so far (prom-client's default metrics), to tell its stalls from the VM's.
    const gc = (await (await fetch(`${gatewayUrl}/metrics`)).text())
      .split("\n")
      .filter((l) =>
        /^nodejs_gc_duration_seconds_(sum|count)|^nodejs_eventloop_lag_(p99|max)_seconds /.test(l),
      );
    process.stderr.write(`  gateway: ${gc.join("; ")}\n`);
  }
  console.log(
    "| streams | TTFT p50 ms (direct / gateway) | TTFT p99 ms (direct / gateway) | added TTFT p50 ms | added TTFT p99 ms | added in the path p50 / p99 ms | ITL p50 ms (direct / gateway) | ITL p99 ms (direct / gateway) | gateway CPU s per 1,000 tokens | requests via gateway | failures |",
  );
  console.log("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
  for (const r of rows) console.log(r);
  console.log(
    "\nWhere the time to first token goes, p50 (p99) ms. Direct: client to replica, replica's own, replica to client. " +
      "Through the gateway: client to gateway (accepted), gateway before sending, gateway to replica, replica's own, " +
      "replica to gateway (first token read), gateway to client.\n",
  );
  console.log(
    "| streams | direct: to replica | replica | to client | gateway: to gateway | gateway's own | to replica | replica | to gateway | to client |",
  );
  console.log("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
  for (const r of legRows) console.log(r);
  gw.child.kill("SIGTERM");
  sim.child.kill("SIGTERM");
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
