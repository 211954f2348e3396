/**
 * Scheduler extender latency: filter plus prioritize for one pod over 5,000 nodes with 50,000 pods in the
 * cache, over HTTP exactly as kube-scheduler calls it: filter with the NodeNames of all 5,000 nodes
 * (nodeCacheCapable), then, if more than one node is feasible, prioritize with the feasible ones. With
 * `--filter-returns best` (kinfer-scheduler's default) the filter returns one node and kube-scheduler
 * skips prioritize; `all` measures the two-call exchange. For each policy.
 *
 * The cache holds 50,000 pods, placed through the same accounting the informers feed: four DaemonSet pods
 * per node and 30,000 pods drawn from the openb trace (about 56% of the GPUs and 66% of the CPU taken).
 * The pods scheduled (`--shapes`): `trace` (default), drawn from the same trace, a steady workload;
 * `six`, six shapes the cluster has not run before (two GPU shares, one to four whole GPUs: new model
 * servers), so the fragmentation policy's learned mix shifts while they arrive; `distinct`, trace pods
 * each given a shape of its own (a CPU request no other pod has), the worst case for the extender's score
 * cache (placement-cache.ts), which remembers scores per pod shape. Latencies are
 * reported apart for pods that get a node and pods that fit nowhere (whose reply lists all 5,000 nodes
 * with a reason, ~190 KB). The extender runs in its own process, as it does beside kube-scheduler; this
 * program is the client. Target (issue 5): p99 at most 5 ms.
 *
 *   npm run bench:scheduler [-- --iterations 1000 --policies fragmentation,spread
 *     --filter-returns best|all --shapes trace|six|distinct]
 */
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { Agent, request } from "undici";
import { createRng } from "../common/random.js";
import { createClusterState } from "../scheduler/cluster/cluster-state.js";
import { candidatePlacements, checkFit } from "../scheduler/cluster/fit.js";
import { readPods } from "../scheduler/cluster/openb-trace.js";
import { GPU_MILLI, GPU_MODELS_ANNOTATION, type PodRequest } from "../scheduler/cluster/pod-request.js";
import type { PolicyName } from "../scheduler/policies/placement-policy.js";
import { startSchedulerServer } from "../scheduler/scheduler-server.js";

const NODES = 5000;
const PODS = 50_000;
/** Of the pods in the cache, DaemonSet pods per node; the rest (30,000) come from the openb trace. */
const DAEMON_PODS = 4;
const MODELS = ["G2", "T4", "P100", "V100M32"];
const TRACE = new URL("../data/openb/openb_pod_list_default.csv", import.meta.url).pathname;

function pct(values: number[], p: number) {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? Number.NaN;
}

/** Builds the cache (the same for every policy: seeded) and serves it; prints "ready <url> <pods>". */
async function serve(policy: PolicyName, filterReturns: "best" | "all") {
  const random = createRng(1);
  const state = createClusterState();
  for (let i = 0; i < NODES; i++) {
    state.upsertNode({
      name: `node-${i}`,
      model: MODELS[i % MODELS.length] as string,
      cpuMilli: 96_000,
      memMiB: 786_432,
      gpus: 8,
      nvlinkDomainSize: 0,
      schedulable: true,
    });
  }
  const mix = readPods(TRACE);
  const nodes = [...state.nodes.values()];
  // DaemonSet pods first (logs, metrics, GPU device plugin and DCGM exporter on every node), then trace
  // pods on random nodes where they fit.
  const daemon: PodRequest = { gpus: 0, gpuMilli: 0, cpuMilli: 100, memMiB: 128, models: [], policy: "" };
  let placed = 0;
  for (let attempt = 0; placed < PODS; attempt++) {
    if (attempt === PODS * 20) throw new Error(`only ${placed} pods fit the cluster`);
    const r = placed < NODES * DAEMON_PODS ? daemon : mix[Math.floor(random() * mix.length)];
    const node =
      placed < NODES * DAEMON_PODS ? nodes[placed % NODES] : nodes[Math.floor(random() * nodes.length)];
    if (r === undefined || node === undefined || !checkFit(node, r).fits) continue;
    const devices = candidatePlacements(node, r)[0] ?? [];
    state.upsertPod({
      uid: `pod-${placed}`,
      key: `bench/pod-${placed}`,
      node: node.name,
      request: r,
      devices,
    });
    placed++;
  }
  const server = await startSchedulerServer({
    host: "127.0.0.1",
    port: 0,
    state,
    defaultPolicy: policy,
    filterReturns,
  });
  console.log(`ready ${server.url} ${state.podCount}`);
}

type Shapes = "trace" | "six" | "distinct";

/** The pods to schedule: `count` pod requests in the chosen shapes (see the module comment). */
function podsToSchedule(shapes: Shapes, count: number): PodRequest[] {
  const random = createRng(2);
  const trace = readPods(TRACE);
  const six: PodRequest[] = [470, 810, 1, 2, 3, 4].map((n) => ({
    gpus: n < 100 ? n : 0,
    gpuMilli: n < 100 ? 0 : n,
    cpuMilli: 2000,
    memMiB: 8192,
    models: [],
    policy: "",
  }));
  return Array.from({ length: count }, (_, i) => {
    if (shapes === "six") return six[i % six.length] as PodRequest;
    const r = trace[Math.floor(random() * trace.length)] as PodRequest;
    return shapes === "trace" ? r : { ...r, cpuMilli: r.cpuMilli + 1 + i }; // a CPU request of its own
  });
}

/** The Pod kube-scheduler would send for a request. */
function podOf(r: PodRequest, uid: string) {
  const annotations: Record<string, string> = {};
  if (r.gpuMilli > 0) annotations[GPU_MILLI] = String(r.gpuMilli);
  if (r.models.length > 0) annotations[GPU_MODELS_ANNOTATION] = r.models.join(",");
  return {
    metadata: { name: uid, namespace: "bench", uid, annotations },
    spec: {
      schedulerName: "gpu-scheduler",
      containers: [
        {
          name: "c",
          resources: {
            requests: { cpu: `${r.cpuMilli}m`, memory: `${r.memMiB}Mi` },
            limits: r.gpus > 0 ? { "nvidia.com/gpu": String(r.gpus) } : {},
          },
        },
      ],
    },
  };
}

/** Filter (+ prioritize when kube-scheduler would call it) per pod: latencies of placed and unplaced pods. */
async function measure(
  url: string,
  policy: string,
  iterations: number,
  shapes: Shapes,
): Promise<{ placed: number[]; unplaced: number[]; scoredPerPod: number }> {
  const nodeNames = Array.from({ length: NODES }, (_, i) => `node-${i}`);
  const agent = new Agent({ connections: 1 });
  // Every request body is built before timing starts, so that the client's own work and garbage stay
  // out of the measurement.
  const pods = podsToSchedule(shapes, iterations + 20).map((r, i) => {
    const pod = podOf(r, `${policy}-${i}`);
    return { pod, body: Buffer.from(JSON.stringify({ Pod: pod, Nodes: null, NodeNames: nodeNames })) };
  });
  const post = async (verb: string, body: Buffer | string) => {
    const res = await request(`${url}/scheduler/${verb}`, {
      method: "POST",
      body,
      headers: { "content-type": "application/json" },
      dispatcher: agent,
    });
    if (res.statusCode !== 200) throw new Error(`${verb}: HTTP ${res.statusCode}`);
    return res.body.text();
  };
  const placed: number[] = [];
  const unplaced: number[] = [];
  for (const [i, { pod, body }] of pods.entries()) {
    const started = performance.now();
    const filtered = JSON.parse(await post("filter", body)) as { NodeNames: string[] | null };
    // kube-scheduler scores only the feasible nodes, and skips scoring when there is one.
    const feasible = filtered.NodeNames ?? [];
    if (feasible.length > 1)
      await post("prioritize", JSON.stringify({ Pod: pod, Nodes: null, NodeNames: feasible }));
    if (i < 20) continue; // the first 20 warm the JIT
    (feasible.length > 0 ? placed : unplaced).push(performance.now() - started);
  }
  // How many node evaluations the extender worked out rather than read from its score cache.
  const metrics = await (await request(`${url}/metrics`, { dispatcher: agent })).body.text();
  const scored = Number(
    /kinfer_scheduler_node_evaluations_total\{source="scored"\} (\S+)/.exec(metrics)?.[1],
  );
  await agent.close();
  return { placed, unplaced, scoredPerPod: scored / pods.length };
}

async function main() {
  const { values } = parseArgs({
    options: {
      iterations: { type: "string", default: "1000" },
      policies: { type: "string", default: "fragmentation,bestfit,binpack,spread" },
      serve: { type: "string" },
      "filter-returns": { type: "string", default: "best" },
      shapes: { type: "string", default: "trace" },
    },
  });
  const shapes = values.shapes as Shapes;
  if (!["trace", "six", "distinct"].includes(shapes)) throw new Error("--shapes: trace, six or distinct");
  const filterReturns = values["filter-returns"] === "all" ? "all" : "best";
  if (values.serve !== undefined) return serve(values.serve as PolicyName, filterReturns);
  console.log(
    `${NODES} nodes, ${values.iterations} pods scheduled per policy, filter returns ${filterReturns}, ` +
      `pods in ${shapes} shapes\n`,
  );
  console.log(
    "| policy | pods in cache | pods given a node | p50 (ms) | p99 (ms) | max (ms) | pods that fit nowhere: p50 | p99 | nodes scored per pod |",
  );
  console.log("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
  for (const policy of values.policies.split(",")) {
    const child = spawn(
      process.execPath,
      // The flags bin/kinfer-scheduler runs with.
      [
        "--max-semi-space-size=64",
        "--trace-gc",
        "--import",
        "tsx",
        fileURLToPath(import.meta.url),
        "--serve",
        policy,
        "--filter-returns",
        filterReturns,
      ],
      {
        stdio: ["ignore", "pipe", "inherit"],
      },
    );
    const [url, pods] = await new Promise<[string, string]>((resolve, reject) => {
      child.once("exit", (code) => reject(new Error(`server exited with ${code}`)));
      createInterface({ input: child.stdout as NodeJS.ReadableStream }).on("line", (line) => {
        const m = /^ready (\S+) (\d+)$/.exec(line);
        if (m) resolve([m[1] as string, m[2] as string]);
        else process.stderr.write(`${line}\n`); // the server's own output (logs, node flags' traces)
      });
    });
    const { placed, unplaced, scoredPerPod } = await measure(url, policy, Number(values.iterations), shapes);
    child.removeAllListeners("exit");
    child.kill("SIGKILL");
    const ms = (times: number[], p: number) => (times.length === 0 ? "-" : pct(times, p).toFixed(2));
    console.log(
      `| ${policy} | ${pods} | ${placed.length}/${placed.length + unplaced.length} | ${ms(placed, 50)} | ` +
        `${ms(placed, 99)} | ${ms(placed, 100)} | ${ms(unplaced, 50)} | ${ms(unplaced, 99)} | ${Math.round(scoredPerPod)} |`,
    );
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
