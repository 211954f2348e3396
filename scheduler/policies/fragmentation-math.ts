/**
 * The arithmetic of the fragmentation policy (fragmentation-policy.ts): a node's expected GPU
 * fragmentation under a mix of task types, laid out so that scoring 5,000 nodes for a pod takes about a
 * millisecond.
 *
 * For a task type t, the fragmentation of a node is the free GPU share t could not use there:
 * - all of it (`total`) if t is blocked by the node's free CPU or memory;
 * - for t needing k whole GPUs: all of it if fewer than k GPUs are wholly free, else the free share on
 *   partly used GPUs (`partial`);
 * - for t needing a share m of one GPU: the free share on GPUs with less than m free (`below[m]`; all of
 *   it when no GPU has m);
 * - for a CPU-only t: nothing.
 * The expected fragmentation weighs these by the mix's weights. Types that need the same GPUs (same k,
 * or same m) form a class with one value, so the sum runs over classes, not types; which types CPU and
 * memory block depends only on where the node's free CPU and memory fall among the types' requests, so
 * each class's unblocked weight comes from a table (`unblocked`) built once per mix. The node's GPUs come
 * summarised (GpuNode's aggregates: free shares sorted, totals), and a placement changes the summary in
 * O(1), so the fragmentation after each candidate placement needs no copy of the node's GPUs.
 */

export interface TaskType {
  readonly gpus: number;
  readonly milli: number;
  readonly cpu: number;
  readonly mem: number;
  readonly weight: number;
}

export interface MixTable {
  readonly types: readonly TaskType[];
  /** The sum of the weights (1, or 0 for an empty mix). */
  readonly weight: number;
  /** Distinct share sizes of the share types, ascending. */
  readonly shares: Float64Array;
  /** Per class: whole GPUs its types need; 0 for share and CPU-only classes. */
  readonly classGpus: Float64Array;
  /** Per class: index into `shares` for a share class, -1 otherwise. */
  readonly classShare: Int32Array;
  /** Distinct CPU and memory requests of the types, ascending. */
  readonly cpuSteps: Float64Array;
  readonly memSteps: Float64Array;
  /**
   * unblocked[(i * (memSteps.length + 1) + j) * classes + c]: the weight of class c's types that ask for
   * at most cpuSteps[i - 1] CPU and memSteps[j - 1] memory (i, j = 0: none).
   */
  readonly unblocked: Float64Array;
}

function distinctSorted(values: Iterable<number>): number[] {
  return [...new Set(values)].sort((a, b) => a - b);
}

export function mixTable(types: readonly TaskType[]): MixTable {
  const shares = distinctSorted(types.filter((t) => t.gpus === 0 && t.milli > 0).map((t) => t.milli));
  const wholes = distinctSorted(types.filter((t) => t.gpus > 0).map((t) => t.gpus));
  // Classes: whole-GPU classes, then share classes, then the CPU-only class.
  const classes = wholes.length + shares.length + 1;
  const classOf = (t: TaskType) =>
    t.gpus > 0 ? wholes.indexOf(t.gpus) : t.milli > 0 ? wholes.length + shares.indexOf(t.milli) : classes - 1;
  const cpuSteps = distinctSorted(types.map((t) => t.cpu));
  const memSteps = distinctSorted(types.map((t) => t.mem));
  const rows = cpuSteps.length + 1;
  const cols = memSteps.length + 1;
  const unblocked = new Float64Array(rows * cols * classes);
  for (const t of types) {
    const c = classOf(t);
    for (let i = cpuSteps.indexOf(t.cpu) + 1; i < rows; i++)
      for (let j = memSteps.indexOf(t.mem) + 1; j < cols; j++)
        unblocked[(i * cols + j) * classes + c] += t.weight;
  }
  return {
    types,
    weight: types.reduce((s, t) => s + t.weight, 0),
    shares: Float64Array.from(shares),
    classGpus: Float64Array.from({ length: classes }, (_, c) =>
      c < wholes.length ? (wholes[c] as number) : 0,
    ),
    classShare: Int32Array.from({ length: classes }, (_, c) =>
      c >= wholes.length && c < wholes.length + shares.length ? c - wholes.length : -1,
    ),
    cpuSteps: Float64Array.from(cpuSteps),
    memSteps: Float64Array.from(memSteps),
    unblocked,
  };
}

/** How many of the ascending `steps` are at most `value`. */
function countAtMost(steps: Float64Array, value: number): number {
  let lo = 0;
  let hi = steps.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if ((steps[mid] as number) <= value) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/**
 * Expected fragmentation of a node whose GPUs have `sorted` free thousandths (ascending), `total` in all,
 * `whole` GPUs wholly free and `partial` on the others, except that one GPU went from `from` to `to`
 * since `sorted` (from = -1: none; total, whole and partial already count the change), with `cpuFree`
 * and `memFree` free.
 */
export function expectedFragmentation(
  mix: MixTable,
  sorted: Int32Array,
  total: number,
  whole: number,
  partial: number,
  from: number,
  to: number,
  cpuFree: number,
  memFree: number,
): number {
  if (total === 0) return 0;
  const classes = mix.classGpus.length;
  const row =
    (countAtMost(mix.cpuSteps, cpuFree) * (mix.memSteps.length + 1) + countAtMost(mix.memSteps, memFree)) *
    classes;
  let unblocked = 0;
  let sum = 0;
  // Share classes come in ascending size: `below` (the free share on GPUs with less free than the size)
  // grows by walking `sorted` once.
  let g = 0;
  let below = 0;
  for (let c = 0; c < classes; c++) {
    const u = mix.unblocked[row + c] as number;
    if (u === 0) continue;
    unblocked += u;
    const k = mix.classGpus[c] as number;
    if (k > 0) sum += u * (whole < k ? total : partial);
    else {
      const s = mix.classShare[c] as number;
      if (s < 0) continue; // CPU-only: no GPU fragmentation
      const size = mix.shares[s] as number;
      for (; g < sorted.length && (sorted[g] as number) < size; g++) below += sorted[g] as number;
      let b = below;
      if (from >= 0) b += (to < size ? to : 0) - (from < size ? from : 0);
      sum += u * b;
    }
  }
  // Blocked types can use none of the free share.
  return total * (mix.weight - unblocked) + sum;
}
