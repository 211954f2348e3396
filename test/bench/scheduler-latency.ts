/**
 * Scheduler extender latency: filter plus prioritize for one pod over 5,000 nodes with 50,000 pods in the
 * cache, over HTTP exactly as kube-scheduler calls it: filter with the NodeNames of all 5,000 nodes
 * (nodeCacheCapable), then, if more than one node is feasible, prioritize with the feasible ones. With
 * `--filter-returns best` (kinfer-scheduler's default) the filter returns one node and kube-scheduler
 * skips prioritize; `all` measures the two-call exchange. For each policy. Pods are drawn from the openb mix; the cache is filled through the same accounting the
 * informers feed. The extender runs in its own process, as it does beside kube-scheduler; this program is
 * the client. Target (issue 5): p99 at most 5 ms.
 *
 *   npm run bench:scheduler [-- --iterations 300 --policies fragmentation,spread --filter-returns best|all]
 */
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { Agent, request } from "undici";
import { createClusterState } from "../../scheduler/cluster/cluster-state.js";
import { candidatePlacements, checkFit } from "../../scheduler/placement/fit.js";
import type { PolicyName } from "../../scheduler/policies/placement-policy.js";
import { readPods } from "../../scheduler/replay/trace.js";
import { startSchedulerServer } from "../../scheduler/scheduler-server.js";
import { createRng } from "../../sim/random.js";

const NODES = 5000;
const PODS = 50_000;
const MODELS = ["G2", "T4", "P100", "V100M32"];

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
  const mix = readPods(
    new URL("../../../shared/data/openb/openb_pod_list_default.csv", import.meta.url).pathname,
  );
  const nodes = [...state.nodes.values()];
  let placed = 0;
  for (let attempt = 0; placed < PODS && attempt < PODS * 4; attempt++) {
    const r = mix[Math.floor(random() * mix.length)];
    const node = nodes[Math.floor(random() * nodes.length)];
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

/** Filter (+ prioritize when kube-scheduler would call it) per pod: latencies, and how many pods got a node. */
async function measure(
  url: string,
  policy: string,
  iterations: number,
): Promise<{ times: number[]; placed: number }> {
  const nodeNames = Array.from({ length: NODES }, (_, i) => `node-${i}`);
  const agent = new Agent({ connections: 1 });
  const shares: Record<string, string>[] = [
    { "kinfer.io/gpu-milli": "470" },
    { "kinfer.io/gpu-milli": "810" },
    {},
  ];
  // Every request body is built before timing starts, so that the client's own work and garbage stay
  // out of the measurement.
  const pods = Array.from({ length: iterations + 20 }, (_, i) => {
    const annotations = shares[i % shares.length] as Record<string, string>;
    const pod = {
      metadata: { name: `p${i}`, namespace: "bench", uid: `${policy}-${i}`, annotations },
      spec: {
        schedulerName: "gpu-scheduler",
        containers: [
          {
            name: "c",
            resources: {
              requests: { cpu: "2", memory: "8Gi" },
              limits: "kinfer.io/gpu-milli" in annotations ? {} : { "nvidia.com/gpu": String(1 + (i % 4)) },
            },
          },
        ],
      },
    };
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
  const times: number[] = [];
  let placed = 0;
  for (const [i, { pod, body }] of pods.entries()) {
    const started = performance.now();
    const filtered = JSON.parse(await post("filter", body)) as { NodeNames: string[] | null };
    // kube-scheduler scores only the feasible nodes, and skips scoring when there is one.
    const feasible = filtered.NodeNames ?? [];
    if (feasible.length > 1)
      await post("prioritize", JSON.stringify({ Pod: pod, Nodes: null, NodeNames: feasible }));
    if (i < 20) continue; // the first 20 warm the JIT
    times.push(performance.now() - started);
    if (feasible.length > 0) placed++;
  }
  await agent.close();
  return { times, placed };
}

async function main() {
  const { values } = parseArgs({
    options: {
      iterations: { type: "string", default: "300" },
      policies: { type: "string", default: "fragmentation,bestfit,binpack,spread" },
      serve: { type: "string" },
      "filter-returns": { type: "string", default: "best" },
    },
  });
  const filterReturns = values["filter-returns"] === "all" ? "all" : "best";
  if (values.serve !== undefined) return serve(values.serve as PolicyName, filterReturns);
  console.log(
    `${NODES} nodes, ${values.iterations} pods scheduled per policy, filter returns ${filterReturns}\n`,
  );
  console.log(
    "| policy | pods in cache | pods given a node | filter + prioritize p50 (ms) | p99 (ms) | max (ms) |",
  );
  console.log("|---|---:|---:|---:|---:|---:|");
  for (const policy of values.policies.split(",")) {
    const child = spawn(
      process.execPath,
      // The flags bin/kinfer-scheduler runs with.
      [
        "--max-semi-space-size=64",
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
      });
    });
    const { times, placed } = await measure(url, policy, Number(values.iterations));
    child.removeAllListeners("exit");
    child.kill("SIGKILL");
    console.log(
      `| ${policy} | ${pods} | ${placed}/${times.length} | ${pct(times, 50).toFixed(2)} | ${pct(times, 99).toFixed(2)} | ${Math.max(...times).toFixed(2)} |`,
    );
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
