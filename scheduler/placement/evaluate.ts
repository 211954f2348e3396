/**
 * Filter and score in one pass: for each node, whether the pod fits and, if it does, the policy's score
 * and device choice (evaluateNodes, for prioritize and Explain), and the best of them (chooseBest). The
 * filter and the trace replay choose through the score cache (placement-cache.ts), which is tested to
 * make chooseBest's choice.
 */

import { checkFit, type Fit } from "../cluster/fit.js";
import type { DeviceShare, GpuNode } from "../cluster/gpu-node.js";
import type { PodRequest } from "../cluster/pod-request.js";
import type { PlacementPolicy } from "../policies/placement-policy.js";

export interface Evaluation {
  readonly node: GpuNode;
  readonly fit: Fit;
  /** Raw policy score (higher is better); NaN when the pod does not fit. */
  readonly score: number;
  readonly devices: readonly DeviceShare[];
}

/** Every node's verdict and score; `detail` puts each node's numbers in the reasons (for Explain). */
export function evaluateNodes(
  nodes: Iterable<GpuNode>,
  req: PodRequest,
  policy: PlacementPolicy,
  detail = false,
): Evaluation[] {
  const scorer = policy.forPod(req);
  const out: Evaluation[] = [];
  for (const node of nodes) {
    const fit = checkFit(node, req, detail);
    if (!fit.fits) {
      out.push({ node, fit, score: Number.NaN, devices: [] });
      continue;
    }
    out.push({ node, fit, score: scorer.score(node), devices: scorer.devices(node) });
  }
  return out;
}

/** Scores closer than this tie. */
export const TIE_EPSILON = 1e-12;

/** The best-scoring node that fits; ties broken with one draw of `random` (as kube-scheduler does). */
export function chooseBest(evaluations: readonly Evaluation[], random: () => number): Evaluation | undefined {
  let best: Evaluation[] = [];
  let bestScore = Number.NEGATIVE_INFINITY;
  for (const e of evaluations) {
    if (!e.fit.fits) continue;
    if (e.score > bestScore + TIE_EPSILON) {
      bestScore = e.score;
      best = [e];
    } else if (Math.abs(e.score - bestScore) <= TIE_EPSILON) best.push(e);
  }
  return best.length === 0 ? undefined : best[Math.floor(random() * best.length)];
}

/** kube-scheduler's MaxExtenderPriority. */
export const MAX_SCORE = 10;

/**
 * Extender scores 0..10 (MaxExtenderPriority): the best node 10, the worst that fits 0, linear between;
 * all 10 when they tie. Nodes that do not fit get 0.
 */
export function extenderScores(evaluations: readonly Evaluation[]): { host: string; score: number }[] {
  const fitting = evaluations.filter((e) => e.fit.fits);
  const max = Math.max(...fitting.map((e) => e.score));
  const min = Math.min(...fitting.map((e) => e.score));
  return evaluations.map((e) => ({
    host: e.node.name,
    score: !e.fit.fits
      ? 0
      : max === min
        ? MAX_SCORE
        : Math.round(((e.score - min) / (max - min)) * MAX_SCORE),
  }));
}
