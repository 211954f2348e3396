/**
 * Gateway overhead benchmark: what kinfer's gateway costs per relayed token, side by side in one run with
 * the proxies it is measured against, all in overhead/reference-proxies.ts: nginx as a plain streaming
 * proxy, the seed article's Go gateway (gin + httputil.ReverseProxy), and the floor of a relay in Node
 * (reference/node-relay.ts: Node's http servers and undici relaying bytes, or parsing each event and
 * writing an OpenAI chunk or a gRPC message of its own). Three parts:
 *
 * 1. Relay cost at 1, 64, 256 and 1,024 concurrent streams: closed loops of streaming completions, each
 *    target in turn (direct to the replicas; nginx; the seed gateway; the Node relays; kinfer on each
 *    surface it serves: OpenAI SSE, Connect, gRPC, gRPC-Web), the order rotated every round. Per target: CPU per relayed
 *    token (the proxy's user + system time from /proc over the phase, divided by the tokens its clients
 *    received), the ratio to nginx's, added time to first token and inter-token latency against direct,
 *    and, for the Node processes, V8 heap allocation per relayed token (below).
 * 2. Memory with 1,000 and 10,000 streams open at once (cleartext HTTP/2 clients, 100 streams per
 *    connection, so that a proxy's sockets fit in this machine's file-descriptor limit of 20,000): each
 *    proxy's RSS once every stream has its first token, and the ratio to nginx's.
 * 3. Idle cost: kinfer's CPU and the requests it sends each replica while 64 replicas sit idle.
 *
 * Processes: `kinfer-sim` (4 replicas, max_num_seqs 256; output lengths spread over 32-96 tokens so that a
 * closed loop settles into a steady state instead of bursts), the proxies, and this client. With 2 or
 * more CPUs every proxy is pinned to CPU 1 and the simulator and this client to CPU 0 (taskset): the
 * proxies get the same core, one at a time under load.
 *
 * Added TTFT pairs each request's client-side timing with the replica's own record of it (/sim/traces):
 * (first token at client - sent) - (first token written by the replica - received by the replica), through
 * a proxy minus direct; this removes the engine's step alignment, which varies by a whole step.
 *
 * Allocation: the Node processes run with --trace-gc-nvp, whose line for every collection says how many bytes were
 * allocated on the V8 heap since the previous one (`allocated=`); their sum over a phase, divided by the
 * tokens relayed, is the allocation per token. Off-heap Buffer memory (socket reads) is not in it.
 *
 * KINFER_BENCH_PROFILE=DIR writes a CPU profile of kinfer's gateway there; KINFER_BENCH_GATEWAY_FLAGS adds
 * node flags to it.
 *
 *   npm run bench:overhead [-- --levels 1,64,256,1024 --seconds 10 --rounds 3 --tokens 32-96
 *                              --targets direct,nginx,seed,node,node-parse,node-connect,node-grpc,
 *                                        openai,connect,grpc,grpc-web
 *                              --open 1000,10000
 *                              --idle-seconds 30]
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { availableParallelism, tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";
import { nodeBundle } from "./overhead/node-bundle.js";
import { cpuSeconds, processAlive, rssBytes } from "./overhead/proc-stats.js";
import {
  type ProxyProcess,
  startNginx,
  startNodeRelay,
  startSeedGateway,
} from "./overhead/reference-proxies.js";
import { createStreamClient, openStreams, type Sample, type Surface } from "./overhead/stream-clients.js";

const root = new URL("..", import.meta.url).pathname;

/** Every process this benchmark started, stopped when it exits however it exits (Ctrl-C included). */
const started = new Set<ChildProcess>();
const stopAll = () => {
  for (const child of started) if (child.exitCode === null) child.kill("SIGTERM");
};
process.on("exit", stopAll);
for (const signal of ["SIGINT", "SIGTERM"] as const)
  process.on(signal, () => {
    stopAll();
    process.exit(130);
  });
const PIN = availableParallelism() >= 2;
const PROXY_CPU = PIN ? 1 : undefined;

interface NodeProcess {
  child: ChildProcess;
  lines: string[];
  /** Bytes allocated on the V8 heap so far, from --trace-gc-nvp (0 without it). */
  allocated: number;
}

/**
 * Starts `node ARGS` (with `--import tsx` for a .ts script) on `cpu` (when pinning); resolves when a line
 * matches `ready`.
 */
function startNode(
  args: string[],
  ready: RegExp,
  cpu: number,
  nodeFlags: string[] = [],
): Promise<NodeProcess> {
  const loader = args[0]?.endsWith(".ts") ? ["--import", "tsx"] : [];
  const node = [process.execPath, ...nodeFlags, ...loader, ...args];
  const [cmd, ...rest] = PIN ? ["taskset", "-c", String(cpu), ...node] : node;
  const child = spawn(cmd as string, rest, { cwd: root, stdio: ["ignore", "pipe", "inherit"] });
  started.add(child);
  const proc: NodeProcess = { child, lines: [], allocated: 0 };
  return new Promise((resolve, reject) => {
    const rl = createInterface({ input: child.stdout as NodeJS.ReadableStream });
    rl.on("line", (line) => {
      const gc = / allocated=(\d+) /.exec(line);
      if (gc !== null) proc.allocated += Number(gc[1]);
      else if (proc.lines.length < 1000) proc.lines.push(line);
      if (ready.test(line)) resolve(proc);
    });
    child.once("exit", (code) => reject(new Error(`${args[0]} exited with ${code}`)));
  });
}

async function startSim(replicas: number, engine: string[]): Promise<{ proc: NodeProcess; urls: string[] }> {
  const proc = await startNode(
    ["sim/main.ts", "--model", "m", "--replicas", String(replicas), "--base-port", "0", ...engine],
    /^kinfer-sim: ready$/,
    0,
    // 10,000 open streams take the simulator past V8's default 4 GB heap (about 320 KB a sequence).
    ["--max-old-space-size=12288"],
  );
  const urls = proc.lines
    .map((l) => /at (http\S+)$/.exec(l)?.[1])
    .filter((u): u is string => u !== undefined);
  return { proc, urls };
}

/** kinfer's gateway in front of `replicas`, set up as a relay (round-robin, no admission queue in the way). */
async function startKinfer(replicas: readonly string[]): Promise<NodeProcess & { url: string }> {
  const dir = mkdtempSync(join(tmpdir(), "kinfer-bench-"));
  const configFile = join(dir, "gateway.yaml");
  writeFileSync(
    configFile,
    [
      "listen: {host: 127.0.0.1, port: 0}",
      "logLevel: warn",
      // The relay is measured, not flow control (bench/flow-control.ts measures that): nginx and the seed
      // gateway queue nothing either, so no replica counts as saturated and nothing waits in the gateway.
      "routing: {algorithm: round-robin, queueThreshold: 1000000, kvCacheThreshold: 1}",
      "flow: {maxInFlightPerReplica: 100000, maxPrefillTokensPerReplica: 100000000, maxQueued: 100000}",
      // The gRPC client runs up to 1,024 streams on one HTTP/2 connection: none waits for a stream slot.
      "limits: {maxInFlight: 20000, maxConcurrentStreams: 2048, maxTokens: 8192}",
      "connections: {maxConnections: 15000}",
      "models:",
      "  - name: m",
      "    versions:",
      `      - {name: stable, replicas: [${replicas.join(", ")}]}`,
      "",
    ].join("\n"),
  );
  const profile = process.env.KINFER_BENCH_PROFILE;
  const flags = [
    "--trace-gc-nvp",
    ...(profile ? ["--cpu-prof", "--cpu-prof-dir", profile] : []),
    ...(process.env.KINFER_BENCH_GATEWAY_FLAGS ?? "").split(" ").filter(Boolean),
  ];
  const proc = await startNode(
    [nodeBundle("server/main.ts", "gateway"), "--config", configFile],
    /^kinfer-gateway: serving/,
    1,
    flags,
  );
  const url = /at (http\S+)$/.exec(
    proc.lines.find((l) => l.startsWith("kinfer-gateway: serving")) ?? "",
  )?.[1];
  return Object.assign(proc, { url: url as string });
}

/** What the client drives: a name, a surface, where to send and whose CPU to count (none for direct). */
interface Target {
  readonly name: string;
  readonly surface: Surface;
  readonly urls: readonly string[];
  readonly h2Url: string;
  readonly pid: number | undefined;
  /** Heap bytes allocated so far (Node processes only). */
  readonly allocated?: () => number;
  /** What the process printed (kinfer only: its warnings and errors). */
  readonly lines?: () => readonly string[];
}

interface Running {
  readonly targets: Target[];
  readonly skipped: string[];
  stop(): void;
}

const KINFER_SURFACES: readonly Surface[] = ["openai", "connect", "grpc", "grpc-web"];

/** The reference proxies: --targets name, table label, the surface they serve, how to start one. */
const REFERENCES: readonly {
  name: string;
  label: string;
  surface: Surface;
  start: (replicas: readonly string[], cpu: number | undefined) => Promise<ProxyProcess | string>;
}[] = [
  { name: "nginx", label: "nginx", surface: "openai", start: startNginx },
  { name: "seed", label: "seed Go gateway (gin)", surface: "openai", start: startSeedGateway },
  {
    name: "node",
    label: "Node relay, bytes",
    surface: "openai",
    start: (r, cpu) => startNodeRelay(r, cpu, false),
  },
  {
    name: "node-parse",
    label: "Node relay, parse + serialise",
    surface: "openai",
    start: (r, cpu) => startNodeRelay(r, cpu, true),
  },
  {
    name: "node-connect",
    label: "Node relay, Connect",
    surface: "connect",
    start: (r, cpu) => startNodeRelay(r, cpu, true),
  },
  {
    name: "node-grpc",
    label: "Node relay, gRPC",
    surface: "grpc",
    start: (r, cpu) => startNodeRelay(r, cpu, true),
  },
];

async function startTargets(replicas: readonly string[], wanted: ReadonlySet<string>): Promise<Running> {
  const targets: Target[] = [];
  const skipped: string[] = [];
  const stops: (() => void)[] = [];
  if (wanted.has("direct"))
    targets.push({ name: "direct", surface: "openai", urls: replicas, h2Url: "", pid: undefined });
  for (const { name, label, surface, start } of REFERENCES) {
    if (!wanted.has(name)) continue;
    const p: ProxyProcess | string = await start(replicas, PROXY_CPU);
    if (typeof p === "string") {
      skipped.push(`${name}: ${p}`);
      process.stderr.write(`skipping ${name}: ${p}\n`);
      continue;
    }
    started.add(p.child);
    stops.push(p.stop);
    targets.push({
      name: label,
      surface,
      // gRPC is served on the cleartext HTTP/2 listener, the rest on HTTP/1.1.
      urls: [surface === "grpc" ? p.h2Url : p.url],
      h2Url: p.h2Url,
      pid: p.pid,
      ...(p.allocated && { allocated: p.allocated }),
    });
  }
  if (KINFER_SURFACES.some((s) => wanted.has(s))) {
    const gw = await startKinfer(replicas);
    stops.push(() => gw.child.kill("SIGTERM"));
    for (const surface of KINFER_SURFACES) {
      if (!wanted.has(surface)) continue;
      targets.push({
        name: `kinfer ${surface}`,
        surface,
        urls: [gw.url],
        h2Url: gw.url,
        pid: gw.child.pid,
        allocated: () => gw.allocated,
        lines: () => gw.lines,
      });
    }
  }
  await new Promise((r) => setTimeout(r, 500));
  return {
    targets,
    skipped,
    stop() {
      for (const s of stops) s();
    },
  };
}

function pct(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? Number.NaN;
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
  // A fixed scramble of the request number, so every target gets the same sequence of lengths.
  return (i) => lo + ((Math.imul(i + 1, 2654435761) >>> 0) % span);
}

interface PhaseResult {
  samples: Sample[];
  failures: number;
  tokens: number;
  cpu: number;
  allocated: number;
}

/** Runs `concurrency` closed-loop clients for `seconds` (after a 1 s warm-up) against `target`. */
async function phase(
  target: Target,
  concurrency: number,
  seconds: number,
  length: (i: number) => number,
): Promise<PhaseResult> {
  const clients = target.urls.map((u) => createStreamClient(target.surface, u));
  const samples: Sample[] = [];
  let failures = 0;
  let tokens = 0;
  let n = 0;
  const cpuBefore = target.pid === undefined ? 0 : cpuSeconds(target.pid);
  const allocatedBefore = target.allocated?.() ?? 0;
  const warmUntil = performance.now() + 1000;
  const until = warmUntil + seconds * 1000;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() < until) {
        const i = n++;
        const client = clients[i % clients.length]; // round-robin, as the proxies route here
        const s = await client?.stream(i, length(i)).catch((err: unknown) => {
          if (process.env.KINFER_BENCH_DEBUG) console.error("failure:", err);
          return undefined;
        });
        if (s === undefined) failures++;
        else {
          tokens += s.tokens;
          if (s.sentAt > performance.timeOrigin + warmUntil) samples.push(s);
        }
      }
    }),
  );
  await Promise.all(clients.map((c) => c.close()));
  // Collections that ended the phase are reported a moment later.
  await new Promise((r) => setTimeout(r, 200));
  return {
    samples,
    failures,
    tokens,
    cpu: target.pid === undefined ? 0 : cpuSeconds(target.pid) - cpuBefore,
    allocated: (target.allocated?.() ?? 0) - allocatedBefore,
  };
}

async function relayCost(
  levels: number[],
  rounds: number,
  seconds: number,
  length: (i: number) => number,
  wanted: ReadonlySet<string>,
): Promise<string[]> {
  const sim = await startSim(4, ["--max-num-seqs", "256", "--mean-output-tokens", "100000"]);
  const running = await startTargets(sim.urls, wanted);
  const out: string[] = [];
  try {
    out.push(
      "| streams | target | CPU µs per token | ratio to nginx | added TTFT p50 / p99 ms | ITL p50 / p99 ms | heap allocated per token | tokens | failures |",
      "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    );
    for (const concurrency of levels) {
      const pooled = new Map<Target, PhaseResult>(
        running.targets.map((t) => [t, { samples: [], failures: 0, tokens: 0, cpu: 0, allocated: 0 }]),
      );
      for (let round = 0; round < rounds; round++) {
        const order = running.targets.map((_, i) => running.targets[(i + round) % running.targets.length]);
        for (const target of order as Target[]) {
          const r = await phase(target, concurrency, seconds, length);
          const p = pooled.get(target) as PhaseResult;
          p.samples.push(...r.samples);
          p.failures += r.failures;
          p.tokens += r.tokens;
          p.cpu += r.cpu;
          p.allocated += r.allocated;
          process.stderr.write(
            `${concurrency} streams, round ${round + 1}, ${target.name}: ${r.tokens} tokens, ` +
              `${target.pid === undefined ? "-" : ((r.cpu / r.tokens) * 1e6).toFixed(1)} µs/token\n`,
          );
        }
      }
      const t = await traces(sim.urls);
      /** Time outside the engine before the first token, per request. */
      const outside = (samples: Sample[]) =>
        samples.flatMap((s) => {
          const trace = t.get(s.id);
          return trace === undefined ? [] : [s.firstAt - s.sentAt - (trace[1] - trace[0])];
        });
      const direct = [...pooled].find(([target]) => target.name === "direct")?.[1];
      const nginx = [...pooled].find(([target]) => target.name === "nginx")?.[1];
      const nginxCpu = nginx === undefined ? Number.NaN : nginx.cpu / nginx.tokens;
      const oDirect = direct === undefined ? [] : outside(direct.samples);
      for (const [target, r] of pooled) {
        const perToken = r.cpu / r.tokens;
        const o = outside(r.samples);
        const gaps = r.samples.flatMap((s) => s.gaps);
        const added =
          target.name === "direct" || direct === undefined
            ? "-"
            : `${(pct(o, 50) - pct(oDirect, 50)).toFixed(2)} / ${(pct(o, 99) - pct(oDirect, 99)).toFixed(2)}`;
        out.push(
          `| ${concurrency} | ${target.name} | ${target.pid === undefined ? "-" : (perToken * 1e6).toFixed(1)} | ` +
            `${target.pid === undefined ? "-" : `${(perToken / nginxCpu).toFixed(2)}x`} | ${added} | ` +
            `${pct(gaps, 50).toFixed(1)} / ${pct(gaps, 99).toFixed(1)} | ` +
            `${target.allocated === undefined ? "-" : `${(r.allocated / r.tokens / 1024).toFixed(2)} KB`} | ${r.tokens} | ${r.failures} |`,
        );
      }
    }
  } finally {
    if (process.env.KINFER_BENCH_DEBUG)
      for (const t of running.targets) if (t.lines !== undefined) console.error(t.lines().join("\n"));
    running.stop();
    sim.proc.child.kill("SIGTERM");
  }
  return [...running.skipped.map((s) => `skipped ${s}`), ...out];
}

async function openStreamMemory(counts: number[], wanted: ReadonlySet<string>): Promise<string[]> {
  // Slow steps (a token every 2 s per stream) and room for every stream in the batch: the streams stay
  // open and the simulator stays light, for the proxies' memory to be read with all of them open.
  const perReplica = Math.ceil(Math.max(...counts) / 4);
  const sim = await startSim(4, [
    "--max-num-seqs",
    String(perReplica),
    "--max-num-batched-tokens",
    String(perReplica * 16),
    "--decode-base-ms",
    "2000",
    "--decode-ms-per-seq",
    "0",
    "--prefill-overhead-ms",
    "1",
    "--mean-output-tokens",
    "100000",
  ]);
  const rows: string[] = [];
  const rss = new Map<string, number[]>();
  try {
    // Each proxy fresh for each count, alone: RSS rarely shrinks, so an earlier phase would count too.
    for (const count of counts) {
      for (const name of [...wanted].filter((w) => w !== "direct")) {
        const running = await startTargets(sim.urls, new Set([name]));
        const target = running.targets[0];
        if (target === undefined) continue;
        const idle = rssBytes(target.pid as number);
        const opened = await openStreams(target.surface, target.h2Url, count, 100, 120_000);
        await new Promise((r) => setTimeout(r, 2000));
        // A proxy that died with its streams open (out of memory, say) counts as not having held them.
        const alive = target.pid !== undefined && processAlive(target.pid);
        const bytes = alive ? rssBytes(target.pid as number) : Number.NaN;
        opened.close();
        running.stop();
        process.stderr.write(
          `${count} open streams, ${target.name}: ${opened.opened} opened, RSS ${(idle / 2 ** 20).toFixed(1)} -> ${alive ? `${(bytes / 2 ** 20).toFixed(1)} MiB` : "(the process died)"}\n`,
        );
        rss.set(target.name, [...(rss.get(target.name) ?? []), opened.opened < count ? Number.NaN : bytes]);
        // Let the replicas see the cancellations before the next target opens its streams.
        await new Promise((r) => setTimeout(r, 3000));
      }
    }
    const nginx = rss.get("nginx") ?? [];
    rows.push(
      `| target | ${counts.map((c) => `RSS at ${c.toLocaleString("en")} streams (MiB)`).join(" | ")} | ${counts.map((c) => `ratio to nginx at ${c.toLocaleString("en")}`).join(" | ")} |`,
      `|---|${counts.map(() => "---:").join("|")}|${counts.map(() => "---:").join("|")}|`,
    );
    for (const [name, values] of rss) {
      rows.push(
        `| ${name} | ${values.map((v) => (v / 2 ** 20).toFixed(1)).join(" | ")} | ${values.map((v, i) => (nginx[i] === undefined ? "-" : `${(v / nginx[i]).toFixed(2)}x`)).join(" | ")} |`,
      );
    }
  } finally {
    sim.proc.child.kill("SIGTERM");
  }
  return rows;
}

/**
 * kinfer's cost when nothing happens: its CPU and the requests it sends each replica, watching one replica
 * and then 64; what a watched replica adds is the difference over 63 (the rest is the process's own
 * timers, collectors and metrics, whatever it watches).
 */
async function idleCost(seconds: number): Promise<string[]> {
  const rows = [
    "| replicas watched | seconds | gateway CPU (% of a core) | requests per second per replica |",
    "|---:|---:|---:|---:|",
  ];
  const cpuShare: number[] = [];
  for (const replicas of [1, 64]) {
    const { cpu, requests } = await idleGateway(replicas, seconds);
    cpuShare.push(cpu / seconds);
    rows.push(
      `| ${replicas} | ${seconds} | ${((cpu / seconds) * 100).toFixed(3)}% | ${(requests / seconds / replicas).toFixed(2)} |`,
    );
  }
  const perReplica = ((cpuShare[1] as number) - (cpuShare[0] as number)) / 63;
  rows.push("", `Each watched replica adds ${(perReplica * 100).toFixed(4)}% of a core.`);
  return rows;
}

/** CPU seconds a gateway watching `replicas` idle replicas spends in `seconds`, and the scrapes it sends. */
async function idleGateway(replicas: number, seconds: number): Promise<{ cpu: number; requests: number }> {
  const sim = await startSim(replicas, []);
  const running = await startTargets(sim.urls, new Set(["openai"]));
  try {
    const gw = running.targets[0] as Target;
    const served = async () => {
      let n = 0;
      for (const r of sim.urls) {
        const stats = (await (await fetch(`${r}/sim/stats`)).json()) as { served: Record<string, number> };
        n += (stats.served["GET /health"] ?? 0) + (stats.served["GET /metrics"] ?? 0);
      }
      return n;
    };
    await new Promise((r) => setTimeout(r, 5000)); // past start-up
    const [cpuBefore, requestsBefore] = [cpuSeconds(gw.pid as number), await served()];
    await new Promise((r) => setTimeout(r, seconds * 1000));
    return { cpu: cpuSeconds(gw.pid as number) - cpuBefore, requests: (await served()) - requestsBefore };
  } finally {
    running.stop();
    sim.proc.child.kill("SIGTERM");
  }
}

async function main() {
  const { values } = parseArgs({
    options: {
      levels: { type: "string", default: "1,64,256,1024" },
      seconds: { type: "string", default: "10" },
      rounds: { type: "string", default: "3" },
      tokens: { type: "string", default: "32-96" },
      targets: {
        type: "string",
        default: "direct,nginx,seed,node,node-parse,node-connect,node-grpc,openai,connect,grpc,grpc-web",
      },
      open: { type: "string", default: "1000,10000" },
      "idle-seconds": { type: "string", default: "30" },
    },
  });
  if (PIN) execFileSync("taskset", ["-p", "-c", "0", String(process.pid)], { stdio: "ignore" });
  const wanted = new Set(values.targets.split(","));
  const levels = values.levels.split(",").filter(Boolean).map(Number);
  const output: string[] = [];
  if (levels.length > 0) {
    output.push("Relay cost (pooled rounds; CPU from /proc, per token the clients received):\n");
    output.push(
      ...(await relayCost(
        levels,
        Math.max(1, Number(values.rounds)),
        Number(values.seconds),
        outputLengths(values.tokens),
        wanted,
      )),
    );
  }
  const counts = values.open.split(",").filter(Boolean).map(Number);
  if (counts.length > 0) {
    output.push("\nMemory with streams open (cleartext HTTP/2 clients, 100 streams per connection):\n");
    output.push(...(await openStreamMemory(counts, wanted)));
  }
  const idle = Number(values["idle-seconds"]);
  if (idle > 0) {
    output.push("\nIdle cost of kinfer's gateway:\n");
    output.push(...(await idleCost(idle)));
  }
  console.log(output.join("\n"));
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
