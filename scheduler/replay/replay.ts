/**
 * The trace replay of the FGD paper's experiment, following the authors' simulator step by step
 * (workload.ts: shuffle, tune to the target demand, seeded node order; allocation-levels.ts: the
 * allocation ratio per arrived-demand level), with placements made by the extender's own filter and
 * score code (the placement cache). Pods are placed one by one and never deleted; a pod that fits
 * nowhere fails and is not retried. Score ties go to the first node in the seeded order, as the
 * simulator's smallest-prefixed-name rule does, for every policy. `random` is the paper's Random
 * baseline (a random node that fits, a random placement on it), not an extender policy.
 */

import { createRng } from "../../common/random.js";
import { candidatePlacements, checkFit } from "../cluster/fit.js";
import { allocate, createGpuNode, type DeviceShare, type GpuNode } from "../cluster/gpu-node.js";
import type { TraceNode } from "../cluster/openb-trace.js";
import { gpuMilliOf, type PodRequest } from "../cluster/pod-request.js";
import { createPlacementCache } from "../placement/placement-cache.js";
import type { PlacementPolicy, PolicyName } from "../policies/placement-policy.js";
import { createPolicy } from "../policies/policies.js";
import { createAllocationTrace } from "./allocation-levels.js";
import { buildWorkload } from "./workload.js";

/**
 * A placement policy by name, the paper's Random baseline, or a factory given the trace's pod list (for
 * benchmarks that try a policy's options).
 */
export type ReplayPolicy = PolicyName | "random" | ((workload: readonly PodRequest[]) => PlacementPolicy);

export interface ReplayRun {
  /** Allocation ratio (%) at each arrived-demand level 0..demand, the FGD authors' way (NaN: no event near). */
  readonly allocation: Float64Array;
  /** GPUs left unallocated at the top level: capacity times (100 - allocation[demand]) %. */
  readonly unallocatedGpus: number;
  /** Pods in the workload, and how many fit nowhere. */
  readonly pods: number;
  readonly failed: number;
  /** Arrived GPU demand at the end, in % of capacity. */
  readonly arrivedPercent: number;
}

/** Chooses where a pod goes: a node and its devices, or undefined when it fits nowhere. */
type Placer = (pod: PodRequest) => { node: GpuNode; devices: readonly DeviceShare[] } | undefined;

function policyPlacer(
  nodes: readonly GpuNode[],
  chosen: Exclude<ReplayPolicy, "random">,
  workload: readonly PodRequest[],
): Placer {
  const policy = typeof chosen === "function" ? chosen(workload) : createPolicy(chosen, { workload });
  const placements = createPlacementCache();
  const firstTie = () => 0;
  return (pod) => {
    policy.observe(pod);
    return placements.pickBest(nodes, pod, policy, firstTie);
  };
}

function randomPlacer(nodes: readonly GpuNode[], random: () => number): Placer {
  return (pod) => {
    const fitting = nodes.filter((n) => checkFit(n, pod).fits);
    const node = fitting[Math.floor(random() * fitting.length)];
    if (node === undefined) return undefined;
    const candidates = candidatePlacements(node, pod);
    return { node, devices: candidates[Math.floor(random() * candidates.length)] ?? [] };
  };
}

export function replayOnce(
  traceNodes: readonly TraceNode[],
  pods: readonly PodRequest[],
  policy: ReplayPolicy,
  seed: number,
  demand: number,
): ReplayRun {
  const random = createRng(seed);
  const capacity = traceNodes.reduce((s, n) => s + n.gpus * 1000, 0);
  const workload = buildWorkload(pods, traceNodes.length, capacity, demand, random);
  const nodes = workload.nodeOrder.map((i) => {
    const n = traceNodes[i] as TraceNode;
    return createGpuNode({
      name: n.name,
      model: n.model,
      cpuMilli: n.cpuMilli,
      memMiB: n.memMiB,
      gpus: n.gpus,
    });
  });
  const place = policy === "random" ? randomPlacer(nodes, random) : policyPlacer(nodes, policy, pods);
  const trace = createAllocationTrace(capacity);
  let allocated = 0;
  let arrived = 0;
  let failed = 0;
  for (const pod of workload.pods) {
    arrived += gpuMilliOf(pod);
    const choice = place(pod);
    if (choice === undefined) failed++;
    else {
      allocate(choice.node, pod.cpuMilli, pod.memMiB, choice.devices);
      allocated += gpuMilliOf(pod);
    }
    trace.record(arrived, allocated);
  }
  const allocation = trace.levels(demand);
  return {
    allocation,
    unallocatedGpus: (capacity / 1000) * (1 - (allocation[demand] as number) / 100),
    pods: workload.pods.length,
    failed,
    arrivedPercent: (arrived / capacity) * 100,
  };
}
