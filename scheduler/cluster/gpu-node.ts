/**
 * A node as the scheduler accounts it: allocatable CPU, memory and GPUs, and the free share of each GPU
 * device in thousandths (1000 = a whole free GPU). Multi-GPU pods take whole GPUs; a GPU-share pod takes
 * part of one GPU. NVLink domains (label kinfer.io/nvlink-domain-size) group consecutive GPU indices; a
 * multi-GPU pod must fit inside one domain.
 */

/** Node labels the scheduler reads. */
export const GPU_PRODUCT_LABEL = "nvidia.com/gpu.product";
export const NVLINK_DOMAIN_LABEL = "kinfer.io/nvlink-domain-size";

export interface GpuNode {
  readonly name: string;
  /** GPU model (nvidia.com/gpu.product), "" if unknown. */
  readonly model: string;
  readonly cpuMilli: number;
  readonly memMiB: number;
  /** Free thousandths of each GPU, by device index. */
  readonly free: Int32Array;
  cpuFree: number;
  memFree: number;
  /** GPUs per NVLink domain; 0 when the node has one domain. */
  readonly nvlinkDomainSize: number;
  /** Ready and not cordoned. */
  schedulable: boolean;
  /**
   * Renewed (nextGeneration) on every change, for caches keyed by node state. Unique across nodes, so a
   * generation names one node object in one state: a cache need not also check which node it was.
   */
  generation: number;
}

let lastGeneration = 0;

/** A generation number never given before. */
export function nextGeneration(): number {
  return ++lastGeneration;
}

export function createGpuNode(init: {
  name: string;
  model?: string;
  cpuMilli: number;
  memMiB: number;
  gpus: number;
  nvlinkDomainSize?: number;
  schedulable?: boolean;
}): GpuNode {
  if (!Number.isInteger(init.gpus) || init.gpus < 0 || init.gpus > 64) {
    throw new RangeError(`node ${init.name}: GPU count must be an integer from 0 to 64`);
  }
  return {
    name: init.name,
    model: init.model ?? "",
    cpuMilli: init.cpuMilli,
    memMiB: init.memMiB,
    free: new Int32Array(init.gpus).fill(1000),
    cpuFree: init.cpuMilli,
    memFree: init.memMiB,
    nvlinkDomainSize: init.nvlinkDomainSize ?? 0,
    schedulable: init.schedulable ?? true,
    generation: nextGeneration(),
  };
}

/** Allocated GPU thousandths on the node. */
export function allocatedMilli(node: GpuNode): number {
  let free = 0;
  for (const f of node.free) free += f;
  return node.free.length * 1000 - free;
}

/** One GPU's share of a placement. */
export interface DeviceShare {
  readonly index: number;
  readonly milli: number;
}

/** Takes resources; throws if they are not free (callers check fit first). */
export function allocate(
  node: GpuNode,
  cpuMilli: number,
  memMiB: number,
  devices: readonly DeviceShare[],
): void {
  for (const d of devices) {
    if (d.index < 0 || d.index >= node.free.length || (node.free[d.index] as number) < d.milli) {
      throw new RangeError(`node ${node.name}: GPU ${d.index} has no ${d.milli} free`);
    }
  }
  for (const d of devices) (node.free as Int32Array)[d.index] = (node.free[d.index] as number) - d.milli;
  node.cpuFree -= cpuMilli;
  node.memFree -= memMiB;
  node.generation = nextGeneration();
}

/** Gives resources back. */
export function release(
  node: GpuNode,
  cpuMilli: number,
  memMiB: number,
  devices: readonly DeviceShare[],
): void {
  for (const d of devices) {
    if (d.index >= 0 && d.index < node.free.length) {
      (node.free as Int32Array)[d.index] = Math.min(1000, (node.free[d.index] as number) + d.milli);
    }
  }
  node.cpuFree = Math.min(node.cpuMilli, node.cpuFree + cpuMilli);
  node.memFree = Math.min(node.memMiB, node.memFree + memMiB);
  node.generation = nextGeneration();
}
