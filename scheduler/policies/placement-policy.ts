/**
 * A placement policy scores a node for a pod (higher is better) and picks which of the node's GPUs the
 * pod gets. The extender's prioritize, Explain and the trace replay all go through this interface, so
 * what the replay measures is what the extender does.
 */
import type { DeviceShare, GpuNode } from "../cluster/gpu-node.js";
import type { PodRequest } from "../cluster/pod-request.js";

export type PolicyName = "spread" | "binpack" | "bestfit" | "fragmentation";
export const POLICY_NAMES: readonly PolicyName[] = ["spread", "binpack", "bestfit", "fragmentation"];

export interface ScoredPlacement {
  readonly score: number;
  readonly devices: readonly DeviceShare[];
}

/** Scores nodes for one pod; may keep per-pod caches. */
export interface PodScorer {
  /** `candidates` are the node's distinct placements (non-empty: the pod fits). */
  score(node: GpuNode, candidates: readonly (readonly DeviceShare[])[]): ScoredPlacement;
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

/** Free GPU thousandths left on the node after a placement. */
export function freeAfter(node: GpuNode, devices: readonly DeviceShare[]): number {
  let free = 0;
  for (const f of node.free) free += f;
  for (const d of devices) free -= d.milli;
  return free;
}

/** The candidate whose chosen GPU(s) have the least (tightest) or most free share. */
export function pickByFree(
  node: GpuNode,
  candidates: readonly (readonly DeviceShare[])[],
  prefer: "tightest" | "emptiest",
): readonly DeviceShare[] {
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
