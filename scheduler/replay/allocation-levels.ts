/**
 * The figure of merit as the FGD authors compute it (their simulator logs used and arrived GPU after
 * every pod; experiments/analysis/merge_alloc_discrete_0920.py reduces the log): for each pod event,
 * placed or failed, the arrived demand in percent of GPU capacity rounded to a whole level (Python's
 * round, halves to even) and the allocation ratio in percent rounded to two decimals; the value at level L
 * is the mean ratio over the events at L, or over the events at L-1 to L+1 when none is at L, rounded to
 * two decimals, and missing (NaN) when none is there either. So the figure "at 130%" averages the last
 * half point or so of arrivals, not the state after the last pod.
 */

export interface AllocationTrace {
  /** One pod event: GPU thousandths arrived so far (this pod included) and allocated after it. */
  record(arrivedMilli: number, allocatedMilli: number): void;
  /** Allocation ratio (%) at levels 0..maxLevel. */
  levels(maxLevel: number): Float64Array;
}

/** Python's round(x) for a float: to the nearest integer, halves to even. */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

const round2 = (x: number) => Math.round(x * 100) / 100;

export function createAllocationTrace(capacityMilli: number): AllocationTrace {
  const gpus = capacityMilli / 1000;
  const sums = new Map<number, number>();
  const counts = new Map<number, number>();
  return {
    record(arrivedMilli, allocatedMilli) {
      const level = roundHalfEven(arrivedMilli / gpus / 10);
      sums.set(level, (sums.get(level) ?? 0) + round2(allocatedMilli / gpus / 10));
      counts.set(level, (counts.get(level) ?? 0) + 1);
    },
    levels(maxLevel) {
      const out = new Float64Array(maxLevel + 1);
      for (let level = 0; level <= maxLevel; level++) {
        let n = counts.get(level) ?? 0;
        let sum = sums.get(level) ?? 0;
        if (n === 0)
          for (const near of [level - 1, level + 1]) {
            n += counts.get(near) ?? 0;
            sum += sums.get(near) ?? 0;
          }
        out[level] = n === 0 ? Number.NaN : round2(sum / n);
      }
      return out;
    },
  };
}
