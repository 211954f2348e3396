/**
 * A GPU node as the scheduler accounts it (scheduler/cluster/gpu-node.ts): the GPU count it accepts, the
 * aggregates it keeps in step with the per-GPU free shares (what fit and scoring read instead of every
 * GPU), allocation refusing what is not free, release ignoring devices the node does not have, copies
 * that can be changed without touching the original, and generations that name one node in one state.
 */
import { describe, expect, it } from "vitest";
import {
  allocate,
  allocatedMilli,
  copyGpuNode,
  createGpuNode,
  type GpuNode,
  release,
} from "../../../scheduler/cluster/gpu-node.js";

const make = (gpus: number, nvlinkDomainSize = 0) =>
  createGpuNode({ name: "n", model: "H100", cpuMilli: 8000, memMiB: 65_536, gpus, nvlinkDomainSize });

/** A node whose GPUs have exactly these free shares. */
function withFree(free: number[], nvlinkDomainSize = 0): GpuNode {
  const node = make(free.length, nvlinkDomainSize);
  allocate(
    node,
    0,
    0,
    free.flatMap((f, index) => (f < 1000 ? [{ index, milli: 1000 - f }] : [])),
  );
  expect([...node.free]).toEqual(free);
  return node;
}

const summary = (n: GpuNode) => ({
  freeMilli: n.freeMilli,
  wholeFree: n.wholeFree,
  wholeFreeInDomain: n.wholeFreeInDomain,
  maxFree: n.maxFree,
  freeSorted: [...n.freeSorted],
  allocated: allocatedMilli(n),
});

describe("GPU node", () => {
  it("takes 0 to 64 GPUs, whole numbers only, and says so by name otherwise", () => {
    for (const gpus of [0, 1, 8, 64]) expect(make(gpus).free.length).toBe(gpus);
    for (const gpus of [-1, 65, 1000, 1.5, 0.5, Number.NaN, Number.POSITIVE_INFINITY]) {
      expect(() => createGpuNode({ name: "big", cpuMilli: 1, memMiB: 1, gpus })).toThrow(
        new RangeError("node big: GPU count must be an integer from 0 to 64"),
      );
    }
  });

  it("starts empty: every GPU wholly free, CPU and memory all free, schedulable, model unknown", () => {
    const n = createGpuNode({ name: "fresh", cpuMilli: 4000, memMiB: 1024, gpus: 4 });
    expect({
      model: n.model,
      nvlinkDomainSize: n.nvlinkDomainSize,
      schedulable: n.schedulable,
      cpuFree: n.cpuFree,
      memFree: n.memFree,
      free: [...n.free],
    }).toEqual({
      model: "",
      nvlinkDomainSize: 0,
      schedulable: true,
      cpuFree: 4000,
      memFree: 1024,
      free: [1000, 1000, 1000, 1000],
    });
    expect(summary(n)).toEqual({
      freeMilli: 4000,
      wholeFree: 4,
      wholeFreeInDomain: 4,
      maxFree: 1000,
      freeSorted: [1000, 1000, 1000, 1000],
      allocated: 0,
    });
    expect(summary(make(0))).toEqual({
      freeMilli: 0,
      wholeFree: 0,
      wholeFreeInDomain: 0,
      maxFree: 0,
      freeSorted: [],
      allocated: 0,
    });
  });

  it("keeps the aggregates of partly used GPUs: free and used thousandths, largest share, sorted shares", () => {
    const n = withFree([1000, 250, 1000, 0, 600, 1000]);
    expect(summary(n)).toEqual({
      freeMilli: 3850,
      wholeFree: 3,
      wholeFreeInDomain: 3,
      maxFree: 1000,
      freeSorted: [0, 250, 600, 1000, 1000, 1000],
      allocated: 2150,
    });
    // No GPU wholly free: the largest share is the largest partial one.
    expect(summary(withFree([100, 700, 0, 350]))).toEqual({
      freeMilli: 1150,
      wholeFree: 0,
      wholeFreeInDomain: 0,
      maxFree: 700,
      freeSorted: [0, 100, 350, 700],
      allocated: 2850,
    });
  });

  it("counts wholly free GPUs per NVLink domain and keeps the largest domain's count, not the last one's", () => {
    // Domains of 4: [1000 1000 1000 0] [1000 0 1000 0]: three free together in the first, two in the second.
    const n = withFree([1000, 1000, 1000, 0, 1000, 0, 1000, 0], 4);
    expect(n.wholeFree).toBe(5);
    expect(n.wholeFreeInDomain).toBe(3);
    // Wholly free GPUs need not be adjacent within a domain.
    expect(withFree([1000, 0, 1000, 1000, 0, 0], 3).wholeFreeInDomain).toBe(2);
    // Free GPUs on both sides of a domain boundary are not together.
    expect(withFree([0, 1000, 1000, 0, 1000, 0], 2).wholeFreeInDomain).toBe(1);
    // Without domains, all the node's GPUs are one domain.
    expect(withFree([0, 1000, 1000, 1000, 0, 1000]).wholeFreeInDomain).toBe(4);
  });

  it("allocates only what is free, all devices or none, and renews the generation", () => {
    const n = make(4);
    const before = n.generation;
    allocate(n, 1500, 2048, [
      { index: 1, milli: 1000 },
      { index: 2, milli: 300 },
    ]);
    expect([...n.free]).toEqual([1000, 0, 700, 1000]);
    expect([n.cpuFree, n.memFree]).toEqual([6500, 63_488]);
    expect(n.generation).not.toBe(before);
    expect(allocatedMilli(n)).toBe(1300);
    // Exactly the free share can be taken; one more cannot.
    const refused: [number, number, string][] = [
      [2, 701, "node n: GPU 2 has no 701 free"],
      [1, 1, "node n: GPU 1 has no 1 free"],
      [4, 1, "node n: GPU 4 has no 1 free"],
      [-1, 1, "node n: GPU -1 has no 1 free"],
    ];
    for (const [index, milli, message] of refused) {
      const generation = n.generation;
      expect(() =>
        allocate(n, 100, 100, [
          { index: 0, milli: 1000 },
          { index, milli },
        ]),
      ).toThrow(new RangeError(message));
      // Nothing was taken, not even the device that was free.
      expect([...n.free]).toEqual([1000, 0, 700, 1000]);
      expect([n.cpuFree, n.memFree, n.generation]).toEqual([6500, 63_488, generation]);
    }
    allocate(n, 0, 0, [{ index: 2, milli: 700 }]);
    expect([...n.free]).toEqual([1000, 0, 0, 1000]);
  });

  it("releases up to what the node has, ignoring devices it does not have", () => {
    const n = make(2);
    allocate(n, 2000, 4096, [
      { index: 0, milli: 1000 },
      { index: 1, milli: 400 },
    ]);
    const before = n.generation;
    release(n, 1000, 1024, [
      { index: -1, milli: 1000 },
      { index: 2, milli: 1000 },
      { index: 1, milli: 400 },
    ]);
    expect([...n.free]).toEqual([0, 1000]);
    expect([n.cpuFree, n.memFree]).toEqual([7000, 62_464]);
    expect(n.generation).not.toBe(before);
    expect(summary(n)).toMatchObject({ freeMilli: 1000, wholeFree: 1, maxFree: 1000, allocated: 1000 });
    // Releasing more than was taken never frees more than the node has.
    release(n, 50_000, 500_000, [
      { index: 0, milli: 1000 },
      { index: 0, milli: 1000 },
      { index: 1, milli: 600 },
    ]);
    expect([...n.free]).toEqual([1000, 1000]);
    expect([n.cpuFree, n.memFree]).toEqual([8000, 65_536]);
    expect(summary(n)).toMatchObject({ freeMilli: 2000, wholeFree: 2, allocated: 0 });
  });

  it("copies a node in its current state, and the copy changes independently", () => {
    const n = createGpuNode({
      name: "orig",
      model: "A100",
      cpuMilli: 16_000,
      memMiB: 131_072,
      gpus: 4,
      nvlinkDomainSize: 2,
      schedulable: false,
    });
    allocate(n, 3000, 8192, [
      { index: 0, milli: 1000 },
      { index: 3, milli: 250 },
    ]);
    const copy = copyGpuNode(n);
    const state = (x: GpuNode) => ({
      name: x.name,
      model: x.model,
      cpuMilli: x.cpuMilli,
      memMiB: x.memMiB,
      nvlinkDomainSize: x.nvlinkDomainSize,
      schedulable: x.schedulable,
      cpuFree: x.cpuFree,
      memFree: x.memFree,
      free: [...x.free],
      ...summary(x),
    });
    expect(state(copy)).toEqual(state(n));
    expect(state(copy)).toMatchObject({ free: [0, 1000, 1000, 750], wholeFreeInDomain: 1, cpuFree: 13_000 });
    expect(copy.generation).not.toBe(n.generation);
    const original = state(n);
    allocate(copy, 1000, 1000, [{ index: 1, milli: 1000 }]);
    release(copy, 3000, 8192, [{ index: 0, milli: 1000 }]);
    expect(state(n)).toEqual(original);
    expect([...copy.free]).toEqual([1000, 0, 1000, 750]);
  });

  it("gives every change a generation never given before, across nodes", () => {
    const a = make(2);
    const b = make(2);
    const seen = new Set([a.generation, b.generation]);
    for (let i = 0; i < 5; i++) {
      allocate(a, 0, 0, [{ index: 0, milli: 100 }]);
      seen.add(a.generation);
      release(b, 0, 0, []);
      seen.add(b.generation);
      seen.add(copyGpuNode(a).generation);
    }
    expect(seen.size).toBe(17);
  });
});
