/**
 * sched:replay: reproduces the FGD paper's experiment on an openb trace with any policy.
 *
 *   npm run sched:replay -- --nodes <node csv> --pods <pod csv> --policy fragmentation \
 *     --seeds 42-51 --demand 130 [--json]
 *
 * Prints the GPU allocation ratio (allocated / total GPU) at every 10% of arrived demand and the
 * unallocated GPUs at the end, means over the seeds; `--json` prints one object instead
 * ({allocationRatioAtDemand: {"10": 9.99, ...}, unallocatedGpusAtMaxDemand, ...}). Progress goes to
 * stderr. `--policy random` is a calibration baseline (the paper's Random), not an extender policy.
 */
import { parseArgs } from "node:util";
import { isEntryPoint, runProgram } from "../../common/process/program.js";
import { createRng } from "../../common/random.js";
import { candidatePlacements, checkFit } from "../cluster/fit.js";
import { allocate, createGpuNode } from "../cluster/gpu-node.js";
import { readNodes, readPods, type TraceNode } from "../cluster/openb-trace.js";
import { gpuMilliOf } from "../cluster/pod-request.js";
import { POLICY_NAMES, type PolicyName } from "../policies/placement-policy.js";
import { type ReplayRun, replayOnce, resample } from "./replay.js";

/** The paper's Random baseline: a random node that fits, a random placement on it. */
function replayRandom(
  traceNodes: readonly TraceNode[],
  pods: ReturnType<typeof readPods>,
  seed: number,
  demand: number,
): ReplayRun {
  const random = createRng(seed);
  const nodes = traceNodes.map((n) => createGpuNode({ ...n }));
  const capacity = nodes.reduce((s, n) => s + n.free.length * 1000, 0);
  const ratio = new Float64Array(demand + 1);
  let allocated = 0;
  let arrived = 0;
  let mark = 1;
  let failed = 0;
  const workload = resample(pods, capacity, demand, random);
  for (const pod of workload) {
    const fitting = nodes.filter((n) => checkFit(n, pod).fits);
    const node = fitting[Math.floor(random() * fitting.length)];
    if (node === undefined) failed++;
    else {
      const candidates = candidatePlacements(node, pod);
      allocate(node, pod.cpuMilli, pod.memMiB, candidates[Math.floor(random() * candidates.length)] ?? []);
      allocated += gpuMilliOf(pod);
    }
    arrived += gpuMilliOf(pod);
    while (mark <= demand && arrived >= (mark / 100) * capacity) ratio[mark++] = allocated / capacity;
  }
  while (mark <= demand) ratio[mark++] = allocated / capacity;
  return { ratio, unallocatedGpus: (capacity - allocated) / 1000, pods: workload.length, failed };
}

function parseSeeds(text: string): number[] {
  const range = /^(\d+)-(\d+)$/.exec(text);
  if (range) {
    const [a, b] = [Number(range[1]), Number(range[2])];
    if (b < a || b - a > 1000) throw new Error(`--seeds: bad range "${text}"`);
    return Array.from({ length: b - a + 1 }, (_, i) => a + i);
  }
  const list = text.split(",").map(Number);
  if (list.some((n) => !Number.isInteger(n))) throw new Error(`--seeds: "${text}" is not a list or range`);
  return list;
}

export function main(argv: string[]): void {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      nodes: { type: "string" },
      pods: { type: "string" },
      policy: { type: "string", default: "fragmentation" },
      seeds: { type: "string", default: "42-51" },
      demand: { type: "string", default: "130" },
      json: { type: "boolean", default: false },
    },
  });
  if (values.nodes === undefined || values.pods === undefined)
    throw new Error("--nodes and --pods are required");
  const policy = values.policy;
  if (policy !== "random" && !(POLICY_NAMES as readonly string[]).includes(policy)) {
    throw new Error(`--policy: one of ${[...POLICY_NAMES, "random"].join(", ")}`);
  }
  const demand = Number(values.demand);
  if (!Number.isInteger(demand) || demand < 10 || demand > 1000)
    throw new Error("--demand: a percentage from 10 to 1000");
  const seeds = parseSeeds(values.seeds);
  const nodes = readNodes(values.nodes);
  const pods = readPods(values.pods);

  const runs: ReplayRun[] = [];
  for (const seed of seeds) {
    const started = performance.now();
    runs.push(
      policy === "random"
        ? replayRandom(nodes, pods, seed, demand)
        : replayOnce(nodes, pods, policy as PolicyName, seed, demand),
    );
    process.stderr.write(`seed ${seed}: ${((performance.now() - started) / 1000).toFixed(1)} s\n`);
  }
  const mean = (f: (r: ReplayRun) => number) => runs.reduce((s, r) => s + f(r), 0) / runs.length;
  const at: Record<string, number> = {};
  for (let d = 10; d <= demand; d += 10)
    at[String(d)] = Number((mean((r) => r.ratio[d] as number) * 100).toFixed(2));
  const result = {
    nodes: values.nodes,
    pods: values.pods,
    policy,
    seeds,
    demand,
    allocationRatioAtDemand: at,
    unallocatedGpusAtMaxDemand: Number(mean((r) => r.unallocatedGpus).toFixed(1)),
    failedPods: Number(mean((r) => r.failed).toFixed(1)),
  };
  if (values.json) {
    console.log(JSON.stringify(result));
    return;
  }
  console.log(
    `policy ${policy}, seeds ${seeds[0]}..${seeds.at(-1)}, ${nodes.length} nodes, ${pods.length} pods in the list`,
  );
  console.log("arrived demand (% of GPU capacity) -> GPU allocation ratio (%)");
  for (const [d, v] of Object.entries(at)) console.log(`  ${d.padStart(4)}%  ${v.toFixed(2)}%`);
  console.log(`unallocated GPUs at ${demand}%: ${result.unallocatedGpusAtMaxDemand}`);
}

if (isEntryPoint(import.meta.url)) runProgram("sched:replay", () => main(process.argv.slice(2)));
