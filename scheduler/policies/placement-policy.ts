/**
 * A placement policy scores a node for a pod (higher is better) and picks which of the node's GPUs the
 * pod gets. The extender's prioritize, Explain and the trace replay all go through this interface, so
 * what the replay measures is what the extender does.
 */

import { candidatePlacements } from "../cluster/fit.js";
import type { DeviceShare, GpuNode } from "../cluster/gpu-node.js";
import { gpuMilliOf, type PodRequest } from "../cluster/pod-request.js";

export type PolicyName = "spread" | "binpack" | "bestfit" | "fragmentation" | "fgd-reference";
export const POLICY_NAMES: readonly PolicyName[] = [
  "spread",
  "binpack",
  "bestfit",
  "fragmentation",
  "fgd-reference",
];

/**
 * Scores nodes for one pod; may keep per-pod caches. It is only given nodes the pod fits (checkFit).
 * Scoring allocates nothing: it runs for thousands of nodes per pod; the devices are asked for the node
 * chosen.
 */
export interface PodScorer {
  /** The node's score for the pod: higher is better. */
  score(node: GpuNode): number;
  /** The GPUs the pod gets on the node: the placement its score is for. */
  devices(node: GpuNode): readonly DeviceShare[];
}

export interface PlacementPolicy {
  readonly name: PolicyName;
  /**
   * Changes whenever the policy may score the same node state and pod differently than before (the
   * fragmentation policy's learned mix); caches of scores (placement-cache.ts) key on it.
   */
  readonly version: number;
  /** Sees every pod about to be scheduled (the fragmentation policy learns the workload mix). */
  observe(req: PodRequest): void;
  /** Starts scoring one pod. */
  forPod(req: PodRequest): PodScorer;
}

/** Free GPU thousandths left on the node after placing the pod (wherever on the node it goes). */
export function freeAfter(node: GpuNode, req: PodRequest): number {
  return node.freeMilli - gpuMilliOf(req);
}

/** Of the pod's candidate placements on the node, the one on the GPU(s) with the least or most free. */
export function pickByFree(
  node: GpuNode,
  req: PodRequest,
  prefer: "tightest" | "emptiest",
): readonly DeviceShare[] {
  const candidates = candidatePlacements(node, req);
  let best = candidates[0] as readonly DeviceShare[];
  let bestFree = prefer === "tightest" ? Number.POSITIVE_INFINITY : Number.NEGATIVE_INFINITY;
  for (const c of candidates) {
    const f = c.reduce((s, d) => s + (node.free[d.index] as number), 0);
    if (prefer === "tightest" ? f < bestFree : f > bestFree) {
      best = c;
      bestFree = f;
    }
  }
  return best;
}
