/**
 * The fragmentation policy's fast arithmetic (classes of task types, the table of unblocked weights, the
 * O(1) update after a placement) gives the expected fragmentation of its definition, computed here type by
 * type over random mixes and node states.
 */
import { describe, expect, it } from "vitest";
import { createRng } from "../../../common/random.js";
import {
  expectedFragmentation,
  mixTable,
  type TaskType,
} from "../../../scheduler/policies/fragmentation-math.js";

/** The definition (FGD's), one task type at a time. */
function reference(free: Int32Array, cpuFree: number, memFree: number, types: readonly TaskType[]): number {
  const total = free.reduce((s, f) => s + f, 0);
  const whole = free.filter((f) => f === 1000).length;
  let expected = 0;
  for (const t of types) {
    let frag = 0;
    if (t.cpu > cpuFree || t.mem > memFree) frag = total;
    else if (t.gpus > 0) frag = whole < t.gpus ? total : free.reduce((s, f) => s + (f < 1000 ? f : 0), 0);
    else if (t.milli > 0) frag = free.reduce((s, f) => s + (f < t.milli ? f : 0), 0);
    expected += t.weight * frag;
  }
  return expected;
}

function randomMix(random: () => number): TaskType[] {
  const count = 1 + Math.floor(random() * 40);
  const pick = <T>(xs: readonly T[]) => xs[Math.floor(random() * xs.length)] as T;
  const raw = Array.from({ length: count }, () => {
    const kind = random();
    return {
      gpus: kind < 0.4 ? pick([1, 2, 4, 8]) : 0,
      milli: kind >= 0.4 && kind < 0.85 ? pick([100, 250, 470, 500, 810, 999]) : 0,
      cpu: pick([1000, 4000, 8000, 16_000, 32_000]),
      mem: pick([1024, 8192, 65_536, 262_144]),
      weight: random(),
    };
  });
  const sum = raw.reduce((s, t) => s + t.weight, 0);
  return raw.map((t) => ({ ...t, weight: t.weight / sum }));
}

function randomGpus(random: () => number): Int32Array {
  const n = Math.floor(random() * 9);
  return Int32Array.from({ length: n }, () => {
    const r = random();
    return r < 0.4 ? 1000 : r < 0.55 ? 0 : Math.floor(random() * 1000);
  });
}

describe("fragmentation arithmetic", () => {
  it("matches the definition type by type, before and after a placement", () => {
    const random = createRng(3);
    let checked = 0;
    for (let round = 0; round < 300; round++) {
      const types = randomMix(random);
      const mix = mixTable(types);
      for (let k = 0; k < 30; k++) {
        const free = randomGpus(random);
        const cpuFree = Math.floor(random() * 40_000);
        const memFree = Math.floor(random() * 300_000);
        // The node's aggregates, as GpuNode keeps them.
        const sorted = Int32Array.from(free).sort();
        const total = free.reduce((s, f) => s + f, 0);
        const whole = free.filter((f) => f === 1000).length;
        const partial = total - whole * 1000;
        const got = expectedFragmentation(mix, sorted, total, whole, partial, -1, -1, cpuFree, memFree);
        expect(got).toBeCloseTo(reference(free, cpuFree, memFree, types), 6);
        // A share placed on one GPU: the O(1) update of the aggregates gives the changed node's value.
        const gpu = free.findIndex((f) => f > 0);
        if (gpu < 0) continue;
        const from = free[gpu] as number;
        const to = Math.floor(random() * from);
        const after = Int32Array.from(free);
        after[gpu] = to;
        const wholeAfter = from === 1000 ? whole - 1 : whole;
        const partialAfter = from === 1000 ? partial + to : partial - (from - to);
        const incremental = expectedFragmentation(
          mix,
          sorted,
          total - (from - to),
          wholeAfter,
          partialAfter,
          from,
          to,
          cpuFree,
          memFree,
        );
        expect(incremental).toBeCloseTo(reference(after, cpuFree, memFree, types), 6);
        checked++;
      }
    }
    expect(checked).toBeGreaterThan(5000);
  });
});
