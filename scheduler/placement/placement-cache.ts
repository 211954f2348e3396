/**
 * The filter's choice, with memory: for each pod shape (policy, GPUs or GPU share, CPU, memory,
 * accepted models) it keeps every node's verdict and score, and the next pod of the same shape
 * re-evaluates only the nodes whose state changed since (GpuNode.generation), or all of them when the
 * policy's scores changed (PlacementPolicy.version: the fragmentation policy's learned mix). Pods come in runs of one
 * shape (a Deployment's replicas), and between two pods only the node the first one went to changes, so
 * the filter for 5,000 nodes mostly reads 5,000 cached numbers instead of scoring 5,000 nodes.
 *
 * The choice is exactly `chooseBest(evaluateNodes(...))`'s (same scores, same ties, one draw of
 * `random`): the cached value of a node is what scoring it again would give, because fit and score are
 * functions of the node's state, the pod's shape and the policy's version only. The replay goes through
 * this cache too; a unit test compares it with evaluating every node, pod by pod.
 */

import { checkFit } from "../cluster/fit.js";
import type { GpuNode } from "../cluster/gpu-node.js";
import type { PodRequest } from "../cluster/pod-request.js";
import type { PlacementPolicy, PodScorer } from "../policies/placement-policy.js";
import { type Evaluation, TIE_EPSILON } from "./evaluate.js";

/**
 * Cached evaluations of one node list for one pod shape: two numbers per node and nothing else, so that
 * the cache adds no objects for the garbage collector to copy (the chosen node's devices are asked of the
 * policy when it is picked).
 */
interface ShapeEntry {
  readonly policy: PlacementPolicy;
  /** The node list the arrays below are aligned with (the extender reuses one list per NodeNames text). */
  readonly nodes: readonly GpuNode[];
  version: number;
  /** The node's generation when its slot was filled (generations are unique across nodes); 0: never. */
  readonly generations: Float64Array;
  /** Score; NaN when the pod does not fit. */
  readonly scores: Float64Array;
}

export interface PlacementCacheOptions {
  /**
   * Pod shapes remembered (least recently used dropped first). Each takes 16 bytes per node: 128 shapes
   * over 5,000 nodes, 10 MB. Default 128, and fewer on clusters so large that they would take more than
   * `maxBytes`.
   */
  maxShapes?: number;
  /** Memory the cached scores may take. Default 32 MiB. */
  maxBytes?: number;
}

export interface PlacementCache {
  /** The same choice as `chooseBest(evaluateNodes(nodes, req, policy), random)`. */
  pickBest(
    nodes: readonly GpuNode[],
    req: PodRequest,
    policy: PlacementPolicy,
    random: () => number,
  ): Evaluation | undefined;
  /** Shapes currently cached (for /metrics and tests). */
  readonly size: number;
  /** Node evaluations so far: worked out (fit and score) or read from the cache. */
  readonly evaluations: { readonly scored: number; readonly cached: number };
}

function shapeKey(req: PodRequest, policy: PlacementPolicy): string {
  return `${policy.name}|${req.gpus}|${req.gpuMilli}|${req.cpuMilli}|${req.memMiB}|${req.models.join(",")}`;
}

export function createPlacementCache(options: PlacementCacheOptions = {}): PlacementCache {
  const maxShapes = Math.max(1, options.maxShapes ?? 128);
  const maxBytes = options.maxBytes ?? 32 * 2 ** 20;
  /** Shapes kept for a list of `nodes` nodes: within both bounds, and at least the one in use. */
  const shapesFor = (nodes: number) => Math.max(1, Math.min(maxShapes, Math.floor(maxBytes / (16 * nodes))));
  // A Map iterates in insertion order: re-inserting on use makes the first key the least recently used.
  const shapes = new Map<string, ShapeEntry>();
  const evaluations = { scored: 0, cached: 0 };

  /**
   * Arrays of dropped entries, reused for new ones: a stream of new shapes would otherwise allocate two
   * arrays per pod outside the JavaScript heap, and that memory makes V8 run full collections (pauses of
   * 10-20 ms, measured).
   */
  const spare: { generations: Float64Array; scores: Float64Array }[] = [];
  const drop = (entry: ShapeEntry) => {
    if (spare.length < 4) spare.push(entry);
  };

  function entryFor(nodes: readonly GpuNode[], req: PodRequest, policy: PlacementPolicy): ShapeEntry {
    const key = shapeKey(req, policy);
    let entry = shapes.get(key);
    if (entry !== undefined) shapes.delete(key);
    if (entry === undefined || entry.nodes !== nodes || entry.policy !== policy) {
      if (entry !== undefined) drop(entry);
      const i = spare.findIndex((a) => a.generations.length === nodes.length);
      const arrays = i >= 0 ? (spare.splice(i, 1)[0] as (typeof spare)[number]) : undefined;
      arrays?.generations.fill(0);
      entry = {
        policy,
        nodes,
        version: policy.version,
        generations: arrays?.generations ?? new Float64Array(nodes.length),
        scores: arrays?.scores ?? new Float64Array(nodes.length),
      };
    } else if (entry.version !== policy.version) {
      entry.generations.fill(0);
      entry.version = policy.version;
    }
    shapes.set(key, entry);
    while (shapes.size > shapesFor(nodes.length)) {
      const oldest = shapes.keys().next().value as string;
      drop(shapes.get(oldest) as ShapeEntry);
      shapes.delete(oldest);
    }
    return entry;
  }

  return {
    get size() {
      return shapes.size;
    },
    evaluations,
    pickBest(nodes, req, policy, random) {
      const entry = entryFor(nodes, req, policy);
      const { generations, scores } = entry;
      let scorer: PodScorer | undefined;
      let scored = 0;
      // Pass 1: bring stale slots up to date and find the best score and how many nodes tie on it.
      let bestScore = Number.NEGATIVE_INFINITY;
      let bestFrom = 0; // where bestScore was last raised: pickBest's tie list starts there
      let ties = 0;
      for (let i = 0; i < nodes.length; i++) {
        const node = nodes[i] as GpuNode;
        if (generations[i] !== node.generation) {
          generations[i] = node.generation;
          scored++;
          if (!checkFit(node, req).fits) scores[i] = Number.NaN;
          else {
            scorer ??= policy.forPod(req);
            scores[i] = scorer.score(node);
          }
        }
        const score = scores[i] as number;
        if (Number.isNaN(score)) continue;
        if (score > bestScore + TIE_EPSILON) {
          bestScore = score;
          bestFrom = i;
          ties = 1;
        } else if (Math.abs(score - bestScore) <= TIE_EPSILON) ties++;
      }
      evaluations.scored += scored;
      evaluations.cached += nodes.length - scored;
      if (ties === 0) return undefined;
      // Pass 2: the tie that random() names, counting in list order as chooseBest does.
      let k = Math.floor(random() * ties);
      for (let i = bestFrom; i < nodes.length; i++) {
        const score = scores[i] as number;
        if (Number.isNaN(score) || !(Math.abs(score - bestScore) <= TIE_EPSILON) || k-- > 0) continue;
        const node = nodes[i] as GpuNode;
        scorer ??= policy.forPod(req);
        return { node, fit: checkFit(node, req), score, devices: scorer.devices(node) };
      }
      return undefined; // not reached: pass 1 counted `ties` such slots
    },
  };
}
