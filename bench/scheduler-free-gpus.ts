/**
 * Where the GPUs left free at the end of a replay are (BENCHMARKS.md, "Scheduler: fragmentation against
 * FGD"): for each policy, per seed on average, the free GPUs on nodes with under 2 cores free, on nodes
 * with under 4 GiB of memory free (and 2 cores or more), as wholly free GPUs elsewhere, and as partial
 * GPUs elsewhere; and the GPU demand of the pods that failed, by kind. It replays exactly as
 * scheduler/replay does (same workload, node order and tie rule) but keeps the nodes to look at them.
 *
 *   node --import tsx bench/scheduler-free-gpus.ts [--trace default] [--seeds 1-5]
 *     [--policies fgd-reference,fragmentation]
 */
import { parseArgs } from "node:util";
import { createRng } from "../common/random.js";
import { allocate, createGpuNode } from "../scheduler/cluster/gpu-node.js";
import { readNodes, readPods } from "../scheduler/cluster/openb-trace.js";
import { gpuMilliOf } from "../scheduler/cluster/pod-request.js";
import { createPlacementCache } from "../scheduler/placement/placement-cache.js";
import type { PolicyName } from "../scheduler/policies/placement-policy.js";
import { createPolicy } from "../scheduler/policies/policies.js";
import { parseSeeds } from "../scheduler/replay/main.js";
import { buildWorkload } from "../scheduler/replay/workload.js";

const { values } = parseArgs({
  options: {
    trace: { type: "string", default: "default" },
    seeds: { type: "string", default: "1-5" },
    policies: { type: "string", default: "fgd-reference,fragmentation" },
    demand: { type: "string", default: "130" },
  },
});
const DATA = new URL("../data/openb/", import.meta.url).pathname;
const traceNodes = readNodes(`${DATA}openb_node_list_gpu_node.csv`);
const pods = readPods(`${DATA}openb_pod_list_${values.trace}.csv`);
const capacity = traceNodes.reduce((s, n) => s + n.gpus * 1000, 0);
const seeds = parseSeeds(values.seeds);

console.log(`GPUs free at the end, per seed, trace ${values.trace}, seeds ${values.seeds}`);
console.log(
  "| policy | on nodes with < 2 cores free | < 4 GiB free | whole GPUs elsewhere | partial GPUs elsewhere | failed GPU demand by kind |",
);
console.log("|---|---:|---:|---:|---:|---|");
for (const name of values.policies.split(",") as PolicyName[]) {
  const free = { cpu: 0, mem: 0, whole: 0, partial: 0 };
  const failed = new Map<string, number>();
  for (const seed of seeds) {
    const workload = buildWorkload(pods, traceNodes.length, capacity, Number(values.demand), createRng(seed));
    const nodes = workload.nodeOrder.map((i) =>
      createGpuNode({ ...(traceNodes[i] as (typeof traceNodes)[number]) }),
    );
    const policy = createPolicy(name, { workload: pods });
    const cache = createPlacementCache();
    for (const pod of workload.pods) {
      policy.observe(pod);
      const best = cache.pickBest(nodes, pod, policy, () => 0);
      if (best) allocate(best.node, pod.cpuMilli, pod.memMiB, best.devices);
      else {
        const kind = pod.gpus > 0 ? `${pod.gpus} GPU` : pod.gpuMilli > 0 ? "share" : "CPU only";
        failed.set(kind, (failed.get(kind) ?? 0) + gpuMilliOf(pod));
      }
    }
    for (const node of nodes) {
      if (node.cpuFree < 2000) free.cpu += node.freeMilli;
      else if (node.memFree < 4096) free.mem += node.freeMilli;
      else {
        free.whole += node.wholeFree * 1000;
        free.partial += node.freeMilli - node.wholeFree * 1000;
      }
    }
  }
  const gpus = (milli: number) => (milli / seeds.length / 1000).toFixed(1);
  const kinds = [...failed].map(([k, v]) => `${k}: ${gpus(v)}`).join(", ");
  console.log(
    `| ${name} | ${gpus(free.cpu)} | ${gpus(free.mem)} | ${gpus(free.whole)} | ${gpus(free.partial)} | ${kinds} |`,
  );
}
