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
   * Aggregates of `free`, kept in step by allocate and release (as kube-scheduler's NodeInfo keeps its
   * sums), so that checking and scoring 5,000 nodes reads a few fields instead of every GPU:
   * free thousandths in all, wholly free GPUs (in all, and at most in one NVLink domain), the largest free
   * share on one GPU, and the free shares in ascending order.
   */
  readonly freeMilli: number;
  readonly wholeFree: number;
  readonly wholeFreeInDomain: number;
  readonly maxFree: number;
  readonly freeSorted: Int32Array;
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
  const node: GpuNode = {
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
    freeMilli: 0,
    wholeFree: 0,
    wholeFreeInDomain: 0,
    maxFree: 0,
    freeSorted: new Int32Array(init.gpus),
  };
  summarise(node);
  return node;
}

/** A copy of the node in its current state (to try changes on, as preemption does). */
export function copyGpuNode(node: GpuNode): GpuNode {
  const copy = createGpuNode({ ...node, gpus: node.free.length });
  copy.free.set(node.free);
  copy.cpuFree = node.cpuFree;
  copy.memFree = node.memFree;
  summarise(copy);
  return copy;
}

/** Recomputes the aggregates of `free` (see GpuNode). */
function summarise(node: GpuNode): void {
  const n = node as Mutable<GpuNode>;
  const { free, freeSorted } = node;
  const domain = node.nvlinkDomainSize > 0 ? node.nvlinkDomainSize : free.length;
  let freeMilli = 0;
  let wholeFree = 0;
  let wholeFreeInDomain = 0;
  let inDomain = 0;
  let maxFree = 0;
  for (let i = 0; i < free.length; i++) {
    const f = free[i] as number;
    if (i % domain === 0) inDomain = 0;
    freeMilli += f;
    if (f === 1000) {
      wholeFree++;
      inDomain++;
      if (inDomain > wholeFreeInDomain) wholeFreeInDomain = inDomain;
    }
    if (f > maxFree) maxFree = f;
  }
  freeSorted.set(free);
  freeSorted.sort();
  n.freeMilli = freeMilli;
  n.wholeFree = wholeFree;
  n.wholeFreeInDomain = wholeFreeInDomain;
  n.maxFree = maxFree;
}

type Mutable<T> = { -readonly [K in keyof T]: T[K] };

/** Allocated GPU thousandths on the node. */
export function allocatedMilli(node: GpuNode): number {
  return node.free.length * 1000 - node.freeMilli;
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
  summarise(node);
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
  summarise(node);
}
