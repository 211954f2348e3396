/**
 * Whether a pod fits a node, why not, and the distinct ways its GPUs could be placed there. The same
 * code serves the extender's filter, Explain and the trace replay.
 *
 * "Unresolvable" means no eviction could ever make the pod fit (wrong GPU model, more GPUs or CPU than
 * the node has, a multi-GPU pod larger than an NVLink domain); kube-scheduler then skips the node when it
 * looks for preemption victims.
 */
import type { DeviceShare, GpuNode } from "./gpu-node.js";
import type { PodRequest } from "./pod-request.js";

export interface Fit {
  readonly fits: boolean;
  /**
   * Why it does not fit, one of a few fixed texts (FAILURES) as kube-scheduler's own plugins give (it
   * counts nodes per reason in the pod's FailedScheduling event: "0/5000 nodes are available: 3100
   * Insufficient whole GPUs, ..."); with `detail`, followed by the numbers for this node. "" when it fits.
   */
  readonly reason: string;
  readonly unresolvable: boolean;
}

const FITS: Fit = { fits: true, reason: "", unresolvable: false };

/** The reasons a pod does not fit, as reported to kube-scheduler. */
export const FAILURES = {
  model: { fits: false, reason: "GPU model not accepted", unresolvable: true },
  gpuCount: { fits: false, reason: "Too few GPUs on the node", unresolvable: true },
  nvlink: { fits: false, reason: "Pod larger than an NVLink domain", unresolvable: true },
  cpuCapacity: { fits: false, reason: "Insufficient cpu capacity", unresolvable: true },
  memCapacity: { fits: false, reason: "Insufficient memory capacity", unresolvable: true },
  notReady: { fits: false, reason: "Node not ready or cordoned", unresolvable: false },
  cpu: { fits: false, reason: "Insufficient cpu", unresolvable: false },
  mem: { fits: false, reason: "Insufficient memory", unresolvable: false },
  wholeGpus: { fits: false, reason: "Insufficient whole GPUs", unresolvable: false },
  gpuShare: { fits: false, reason: "Insufficient GPU share", unresolvable: false },
} as const satisfies Record<string, Fit>;

/** The failure, with this node's numbers when `detail` is on (Explain), else the shared constant. */
const fail = (failure: Fit, detail: false | string): Fit =>
  detail === false ? failure : { ...failure, reason: `${failure.reason}: ${detail}` };

/** GPU index ranges that a multi-GPU pod may span (one range when the node has no NVLink domains). */
function domains(node: GpuNode): [number, number][] {
  const size = node.nvlinkDomainSize > 0 ? node.nvlinkDomainSize : node.free.length;
  const out: [number, number][] = [];
  for (let start = 0; start < node.free.length; start += size)
    out.push([start, Math.min(node.free.length, start + size)]);
  return out;
}

/**
 * Whether the pod fits the node. Without `detail` a failure is one of the FAILURES constants (nothing is
 * allocated per node, which matters over 5,000 nodes); with it, the reason also says the numbers.
 */
export function checkFit(node: GpuNode, req: PodRequest, detail = false): Fit {
  if (req.models.length > 0 && !req.models.includes(node.model)) {
    return fail(
      FAILURES.model,
      detail && `${node.model || "unknown"} is not one of ${req.models.join(", ")}`,
    );
  }
  const gpuCount = node.free.length;
  if (req.gpus > gpuCount || (req.gpuMilli > 0 && gpuCount === 0)) {
    return fail(FAILURES.gpuCount, detail && `needs ${req.gpus || 1}, the node has ${gpuCount}`);
  }
  if (req.gpus > 1 && node.nvlinkDomainSize > 0 && req.gpus > node.nvlinkDomainSize) {
    return fail(FAILURES.nvlink, detail && `needs ${req.gpus} GPUs, domains of ${node.nvlinkDomainSize}`);
  }
  if (req.cpuMilli > node.cpuMilli)
    return fail(FAILURES.cpuCapacity, detail && `needs ${req.cpuMilli}m, the node has ${node.cpuMilli}m`);
  if (req.memMiB > node.memMiB)
    return fail(FAILURES.memCapacity, detail && `needs ${req.memMiB} MiB, the node has ${node.memMiB} MiB`);
  if (!node.schedulable) return FAILURES.notReady;
  if (req.cpuMilli > node.cpuFree)
    return fail(FAILURES.cpu, detail && `needs ${req.cpuMilli}m, ${node.cpuFree}m free`);
  if (req.memMiB > node.memFree)
    return fail(FAILURES.mem, detail && `needs ${req.memMiB} MiB, ${node.memFree} MiB free`);
  if (req.gpus > 0 && node.wholeFreeInDomain < req.gpus) {
    const where = node.nvlinkDomainSize > 0 ? " in one NVLink domain" : "";
    return fail(
      FAILURES.wholeGpus,
      detail && `needs ${req.gpus} together, ${node.wholeFreeInDomain} free${where}`,
    );
  }
  if (req.gpus === 0 && req.gpuMilli > 0 && node.maxFree < req.gpuMilli) {
    return fail(
      FAILURES.gpuShare,
      detail && `needs ${req.gpuMilli}/1000 of a GPU, at most ${node.maxFree} free on one`,
    );
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
