/**
 * Whether a pod fits a node, why not, and the distinct ways its GPUs could be placed there. The same
 * code serves the extender's filter, Explain and the trace replay.
 *
 * "Unresolvable" means no eviction could ever make the pod fit (wrong GPU model, more GPUs or CPU than
 * the node has, a multi-GPU pod larger than an NVLink domain); kube-scheduler then skips the node when it
 * looks for preemption victims.
 */
import type { DeviceShare, GpuNode } from "../cluster/gpu-node.js";
import type { PodRequest } from "../cluster/pod-request.js";

export interface Fit {
  readonly fits: boolean;
  /** Why it does not fit; "" when it fits. */
  readonly reason: string;
  readonly unresolvable: boolean;
}

const FITS: Fit = { fits: true, reason: "", unresolvable: false };
const fail = (reason: string, unresolvable = false): Fit => ({ fits: false, reason, unresolvable });
/** Failures without their reason text, for callers that only need the verdict (no allocation). */
const NO_FIT: Fit = { fits: false, reason: "", unresolvable: false };
const NO_FIT_EVER: Fit = { fits: false, reason: "", unresolvable: true };

/** GPU index ranges that a multi-GPU pod may span (one range when the node has no NVLink domains). */
function domains(node: GpuNode): [number, number][] {
  const size = node.nvlinkDomainSize > 0 ? node.nvlinkDomainSize : node.free.length;
  const out: [number, number][] = [];
  for (let start = 0; start < node.free.length; start += size)
    out.push([start, Math.min(node.free.length, start + size)]);
  return out;
}

/**
 * Whether the pod fits the node. With `withReason` false, a failure comes without its reason text (the
 * verdict and `unresolvable` are the same), which saves building a string per node that does not fit.
 */
export function checkFit(node: GpuNode, req: PodRequest, withReason = true): Fit {
  if (req.models.length > 0 && !req.models.includes(node.model)) {
    return withReason
      ? fail(`GPU model ${node.model || "unknown"} is not one of ${req.models.join(", ")}`, true)
      : NO_FIT_EVER;
  }
  const gpuCount = node.free.length;
  if (req.gpus > gpuCount || (req.gpuMilli > 0 && gpuCount === 0)) {
    return withReason ? fail(`needs ${req.gpus || 1} GPU(s), the node has ${gpuCount}`, true) : NO_FIT_EVER;
  }
  if (req.gpus > 1 && node.nvlinkDomainSize > 0 && req.gpus > node.nvlinkDomainSize) {
    return withReason
      ? fail(`needs ${req.gpus} GPUs in one NVLink domain of ${node.nvlinkDomainSize}`, true)
      : NO_FIT_EVER;
  }
  if (req.cpuMilli > node.cpuMilli)
    return withReason
      ? fail(`needs ${req.cpuMilli}m CPU, the node has ${node.cpuMilli}m`, true)
      : NO_FIT_EVER;
  if (req.memMiB > node.memMiB)
    return withReason
      ? fail(`needs ${req.memMiB} MiB memory, the node has ${node.memMiB} MiB`, true)
      : NO_FIT_EVER;
  if (!node.schedulable) return withReason ? fail("the node is not ready or is cordoned") : NO_FIT;
  if (req.cpuMilli > node.cpuFree)
    return withReason ? fail(`needs ${req.cpuMilli}m CPU, ${node.cpuFree}m free`) : NO_FIT;
  if (req.memMiB > node.memFree)
    return withReason ? fail(`needs ${req.memMiB} MiB memory, ${node.memFree} MiB free`) : NO_FIT;
  if (req.gpus > 0) {
    let best = 0;
    if (node.nvlinkDomainSize === 0) {
      for (const f of node.free) if (f === 1000) best++;
    } else {
      for (const [a, b] of domains(node)) {
        let whole = 0;
        for (let i = a; i < b; i++) if (node.free[i] === 1000) whole++;
        best = Math.max(best, whole);
      }
    }
    if (best < req.gpus)
      return withReason ? fail(`needs ${req.gpus} whole GPU(s) together, ${best} free`) : NO_FIT;
  } else if (req.gpuMilli > 0) {
    let most = 0;
    for (const f of node.free) most = Math.max(most, f);
    if (most < req.gpuMilli)
      return withReason ? fail(`needs ${req.gpuMilli}/1000 of a GPU, at most ${most} free on one`) : NO_FIT;
  }
  return FITS;
}

/**
 * The distinct placements of the pod's GPUs on a node where it fits: for a share, one GPU per distinct
 * free amount; for whole GPUs, the lowest free indices of each NVLink domain that can hold them; for a
 * CPU-only pod, no devices.
 */
export function candidatePlacements(node: GpuNode, req: PodRequest): DeviceShare[][] {
  if (req.gpus > 0) {
    const out: DeviceShare[][] = [];
    for (const [a, b] of domains(node)) {
      const picked: DeviceShare[] = [];
      for (let i = a; i < b && picked.length < req.gpus; i++)
        if (node.free[i] === 1000) picked.push({ index: i, milli: 1000 });
      if (picked.length === req.gpus) out.push(picked);
    }
    return out;
  }
  if (req.gpuMilli > 0) {
    const seen = new Set<number>();
    const out: DeviceShare[][] = [];
    for (let i = 0; i < node.free.length; i++) {
      const f = node.free[i] as number;
      if (f >= req.gpuMilli && !seen.has(f)) {
        seen.add(f);
        out.push([{ index: i, milli: req.gpuMilli }]);
      }
    }
    return out;
  }
  return [[]];
}
