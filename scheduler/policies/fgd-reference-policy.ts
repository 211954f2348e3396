/**
 * fgd-reference: FGD as the authors' simulator runs it (hkust-adsl/kubernetes-scheduler-simulator, the
 * FGDScore plugin with Open-Gpu-Share's GPU choice), so that kinfer's replay can be checked against the
 * published figures and `fragmentation` compared with FGD on identical pods. It is a yardstick, not a
 * policy to deploy; what it must never do is drift from the simulator's behaviour:
 * - typical pods: the workload's shapes to 95% coverage (typical-pods.ts), from the whole trace up front
 *   when the replay gives it (`workload`), as the simulator reads them before scheduling anything;
 * - a node's fragmentation for a typical pod: all of its free GPU share when the pod is CPU-only, cannot
 *   use the node's GPU model, lacks CPU or finds too few GPUs with its share free; otherwise the free
 *   share of the GPUs too small for it. Memory plays no part (the simulator's node summary has none);
 * - the score: int64(sigmoid((before - after) / 1000) * 100), an integer from 0 to 100, so that many
 *   nodes tie; the replay breaks ties by the seeded node order, as the simulator does (smallest node
 *   name after a seeded prefix);
 * - a GPU share goes to the GPU whose placement scores highest, the lowest index among equal integer
 *   scores; whole GPUs go to the lowest-index free ones; a CPU-only pod is scored like any other, by
 *   the fragmentation its CPU request causes.
 * Without a workload (in the extender) the typical pods are counted from the pods observed so far.
 * The fragmentation arithmetic is fragmentation-math.ts's, with one mix per GPU model.
 */

import { candidatePlacements } from "../cluster/fit.js";
import type { DeviceShare, GpuNode } from "../cluster/gpu-node.js";
import type { PodRequest } from "../cluster/pod-request.js";
import { expectedFragmentation, type MixTable, mixTable } from "./fragmentation-math.js";
import type { PlacementPolicy } from "./placement-policy.js";
import { acceptsModel, shapeOf, type TypicalPod, typicalFromCounts, typicalPods } from "./typical-pods.js";

export interface FgdReferenceOptions {
  /**
   * The workload whose typical pods are used, known up front (the replay passes the trace). Default:
   * none, the typical pods are counted from the pods observed so far.
   */
  workload?: readonly PodRequest[];
  /** Share of the pods the typical shapes cover. Default 0.95 (the published runs). */
  coverage?: number;
  /** Without a workload, the typical pods are recounted every this many pods (and at each of the first). Default 64. */
  refreshEvery?: number;
}

/** One GPU model's view of the typical pods. */
interface ModelMix {
  /** GPU shapes the model can run, for fragmentation-math (memory set to 0: it plays no part). */
  readonly table: MixTable;
  /** Weight of the shapes that always count all free GPU share: CPU-only ones and those the model cannot run. */
  readonly alwaysFragmented: number;
}

/** Entries of the fragmentation-before cache (as in fragmentation-policy.ts). */
const BEFORE_LIMIT = 200_000;

/** The simulator's score for a fragmentation change: an integer from 0 to 100. */
export function fgdScore(before: number, after: number): number {
  return Math.trunc((1 / (1 + Math.exp(-(before - after) / 1000))) * 100);
}

export function createFgdReferencePolicy(options: FgdReferenceOptions = {}): PlacementPolicy {
  const coverage = options.coverage ?? 0.95;
  const refreshEvery = options.refreshEvery ?? 64;
  const fixed = options.workload !== undefined;
  let typical: TypicalPod[] = fixed ? typicalPods(options.workload as readonly PodRequest[], coverage) : [];
  let version = 0;
  const counts = new Map<string, { shape: Omit<TypicalPod, "weight">; count: number }>();
  let seen = 0;

  const mixes = new Map<string, ModelMix>();
  function mixFor(model: string): ModelMix {
    let mix = mixes.get(model);
    if (mix === undefined) {
      let alwaysFragmented = 0;
      const usable = [];
      for (const t of typical) {
        if (t.gpuCount === 0 || !acceptsModel(t.models, model)) alwaysFragmented += t.weight;
        else
          usable.push({
            gpus: t.milliPerGpu === 1000 ? t.gpuCount : 0,
            milli: t.milliPerGpu === 1000 ? 0 : t.milliPerGpu,
            cpu: t.cpuMilli,
            mem: 0,
            weight: t.weight,
          });
      }
      mix = { table: mixTable(usable), alwaysFragmented };
      mixes.set(model, mix);
    }
    return mix;
  }

  /** FGD's fragmentation of a node summary (see expectedFragmentation for the arguments). */
  function fragmentation(
    node: GpuNode,
    total: number,
    whole: number,
    partial: number,
    from: number,
    to: number,
    cpuFree: number,
  ): number {
    const mix = mixFor(node.model);
    return (
      total * mix.alwaysFragmented +
      expectedFragmentation(mix.table, node.freeSorted, total, whole, partial, from, to, cpuFree, 0)
    );
  }

  const before = new Map<number, number>();
  let beforeVersion = 0;
  function now(node: GpuNode): number {
    if (beforeVersion !== version || before.size >= BEFORE_LIMIT) {
      before.clear();
      beforeVersion = version;
    }
    let value = before.get(node.generation);
    if (value === undefined) {
      const { freeMilli, wholeFree } = node;
      value = fragmentation(node, freeMilli, wholeFree, freeMilli - wholeFree * 1000, -1, -1, node.cpuFree);
      before.set(node.generation, value);
    }
    return value;
  }

  return {
    name: "fgd-reference",
    get version() {
      return version;
    },
    observe(req) {
      if (fixed) return;
      const shape = shapeOf(req);
      const key = `${shape.cpuMilli}/${shape.milliPerGpu}/${shape.gpuCount}/${shape.models}`;
      const entry = counts.get(key);
      if (entry) entry.count++;
      else counts.set(key, { shape, count: 1 });
      seen++;
      if (seen <= refreshEvery || seen % refreshEvery === 0) {
        typical = typicalFromCounts(counts.values(), coverage);
        mixes.clear();
        version++;
      }
    },
    forPod(req) {
      let bestScore = 0;
      let bestGpu = -1;
      /** The score and, for a share, the GPU it is for (set in bestScore / bestGpu). */
      function best(node: GpuNode): void {
        const base = now(node);
        const cpuAfter = node.cpuFree - req.cpuMilli;
        const { freeMilli: total, wholeFree: whole } = node;
        const partial = total - whole * 1000;
        bestGpu = -1;
        if (req.gpus > 0 || req.gpuMilli === 0) {
          const k = req.gpus;
          const after = fragmentation(node, total - k * 1000, whole - k, partial, -1, -1, cpuAfter);
          bestScore = fgdScore(base, after);
          return;
        }
        // A share: every GPU that holds it, in index order; GPUs with the same free share score the same,
        // so the first of each is tried, and the earliest keeps a tie.
        bestScore = -1;
        const free = node.free;
        for (let i = 0; i < free.length; i++) {
          const from = free[i] as number;
          if (from < req.gpuMilli) continue;
          let repeat = false;
          for (let j = 0; j < i && !repeat; j++) repeat = free[j] === from;
          if (repeat) continue;
          const to = from - req.gpuMilli;
          const after = fragmentation(
            node,
            total - req.gpuMilli,
            from === 1000 ? whole - 1 : whole,
            from === 1000 ? partial + to : partial - req.gpuMilli,
            from,
            to,
            cpuAfter,
          );
          const score = fgdScore(base, after);
          if (score > bestScore) {
            bestScore = score;
            bestGpu = i;
          }
        }
      }
      return {
        score(node) {
          best(node);
          return bestScore;
        },
        devices(node): readonly DeviceShare[] {
          best(node);
          return bestGpu >= 0
            ? [{ index: bestGpu, milli: req.gpuMilli }]
            : (candidatePlacements(node, req)[0] as readonly DeviceShare[]);
        },
      };
    },
  };
}
