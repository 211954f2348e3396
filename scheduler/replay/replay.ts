/**
 * The trace replay of the FGD paper's experiment: resample the pod list with a seed until its GPU
 * requests reach `demand`% of the cluster's GPU capacity (the whole list first, then pods drawn at random
 * with replacement), shuffle, then place pods one by one with a policy through the extender's own filter
 * and score code (the placement cache, as the extender's filter). Nothing is ever deleted; a pod
 * that fits nowhere fails and is not retried. The allocation ratio (allocated GPU / total GPU) is recorded
 * at every 1% of arrived demand.
 */

import { createRng } from "../../common/random.js";
import { allocate, createGpuNode, type GpuNode } from "../cluster/gpu-node.js";
import type { TraceNode } from "../cluster/openb-trace.js";
import { gpuMilliOf, type PodRequest } from "../cluster/pod-request.js";
import { createPlacementCache } from "../placement/placement-cache.js";
import type { PolicyName } from "../policies/placement-policy.js";
import { createPolicy } from "../policies/policies.js";

export interface ReplayRun {
  /** ratio[d] = allocated GPU / total GPU once d% of capacity had arrived (d = 0..demand). */
  readonly ratio: Float64Array;
  readonly unallocatedGpus: number;
  readonly pods: number;
  readonly failed: number;
}

/** The workload of one seed: the list, topped up by sampling to `demand`%, shuffled. */
export function resample(
  pods: readonly PodRequest[],
  capacityMilli: number,
  demand: number,
  random: () => number,
): PodRequest[] {
  const list = [...pods];
  let total = list.reduce((s, p) => s + gpuMilliOf(p), 0);
  const target = (demand / 100) * capacityMilli;
  while (total < target && pods.length > 0) {
    const p = pods[Math.floor(random() * pods.length)] as PodRequest;
    list.push(p);
    total += gpuMilliOf(p);
  }
  for (let i = list.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [list[i], list[j]] = [list[j] as PodRequest, list[i] as PodRequest];
  }
  return list;
}

export function replayOnce(
  traceNodes: readonly TraceNode[],
  pods: readonly PodRequest[],
  policyName: PolicyName,
  seed: number,
  demand: number,
): ReplayRun {
  const random = createRng(seed);
  const nodes: GpuNode[] = traceNodes.map((n) =>
    createGpuNode({ name: n.name, model: n.model, cpuMilli: n.cpuMilli, memMiB: n.memMiB, gpus: n.gpus }),
  );
  const capacity = nodes.reduce((s, n) => s + n.free.length * 1000, 0);
  const workload = resample(pods, capacity, demand, random);
  const policy = createPolicy(policyName);
  const placements = createPlacementCache();
  const ratio = new Float64Array(demand + 1);
  let allocated = 0;
  let arrived = 0;
  let mark = 1;
  let failed = 0;
  for (const pod of workload) {
    policy.observe(pod);
    const best = placements.pickBest(nodes, pod, policy, random);
    if (best === undefined) failed++;
    else {
      allocate(best.node, pod.cpuMilli, pod.memMiB, best.devices);
      allocated += gpuMilliOf(pod);
    }
    arrived += gpuMilliOf(pod);
    while (mark <= demand && arrived >= (mark / 100) * capacity) ratio[mark++] = allocated / capacity;
  }
  while (mark <= demand) ratio[mark++] = allocated / capacity;
  return { ratio, unallocatedGpus: (capacity - allocated) / 1000, pods: workload.length, failed };
}
