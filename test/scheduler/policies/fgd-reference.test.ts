/**
 * fgd-reference against the FGD simulator's rules, on hand-made nodes: typical pods (coverage cut,
 * order of equally common shapes, renormalised weights, CPU-only shapes), the integer sigmoid score,
 * the GPU a share goes to, GPU models a typical pod cannot use, and a CPU-only pod scored by the
 * fragmentation its CPU request causes.
 */
import { describe, expect, it } from "vitest";
import { allocate, createGpuNode } from "../../../scheduler/cluster/gpu-node.js";
import type { PodRequest } from "../../../scheduler/cluster/pod-request.js";
import { createFgdReferencePolicy, fgdScore } from "../../../scheduler/policies/fgd-reference-policy.js";
import { acceptsModel, typicalPods } from "../../../scheduler/policies/typical-pods.js";

const pod = (p: Partial<PodRequest>): PodRequest => ({
  gpus: 0,
  gpuMilli: 0,
  cpuMilli: 4000,
  memMiB: 8192,
  models: [],
  policy: "",
  ...p,
});
const many = (n: number, p: Partial<PodRequest>) => Array.from({ length: n }, () => pod(p));

describe("typical pods", () => {
  it("keeps the most common shapes until they cover 95%, renormalised, CPU-only shapes included", () => {
    const workload = [
      ...many(60, { gpus: 1 }),
      ...many(30, { cpuMilli: 8000 }), // CPU-only
      ...many(6, { gpuMilli: 500 }),
      ...many(4, { gpus: 8 }),
    ];
    const typical = typicalPods(workload);
    // 60 + 30 = 90% < 95%, + 6 = 96%: three shapes; the 8-GPU one is left out.
    expect(typical.map((t) => [t.gpuCount, t.milliPerGpu])).toEqual([
      [1, 1000],
      [0, 0],
      [1, 500],
    ]);
    expect(typical.map((t) => t.weight)).toEqual([60 / 96, 30 / 96, 6 / 96]);
  });

  it("orders equally common shapes larger first (CPU, then share), as the simulator's reversed sort", () => {
    const typical = typicalPods(
      [...many(5, { gpus: 1, cpuMilli: 2000 }), ...many(5, { gpus: 1, cpuMilli: 9000 })],
      0.4,
    );
    expect(typical).toHaveLength(1);
    expect(typical[0]?.cpuMilli).toBe(9000);
    // Memory is not part of a shape: these are one shape.
    expect(typicalPods([pod({ gpus: 1, memMiB: 1 }), pod({ gpus: 1, memMiB: 2 })])).toHaveLength(1);
  });

  it("accepts a node's model as the simulator does", () => {
    expect(acceptsModel("", "T4")).toBe(true);
    expect(acceptsModel("T4|A10", "A10")).toBe(true);
    expect(acceptsModel("T4", "G2")).toBe(false);
    expect(acceptsModel("T4", "")).toBe(false);
  });
});

describe("fgd-reference", () => {
  it("scores int64(sigmoid(change / 1000) * 100)", () => {
    expect(fgdScore(500, 500)).toBe(50);
    expect(fgdScore(500, 520)).toBe(49); // 49.5 truncated
    expect(fgdScore(1000, 0)).toBe(73); // sigmoid(1) = 0.731
    expect(fgdScore(0, 100_000)).toBe(0);
  });

  it("puts a share on the GPU where it fragments least, the lowest index among equal scores", () => {
    const workload = [...many(50, { gpuMilli: 500 }), ...many(50, { gpus: 1 })];
    const node = createGpuNode({ name: "n", cpuMilli: 64_000, memMiB: 262_144, gpus: 4 });
    allocate(node, 0, 0, [{ index: 2, milli: 500 }]);
    const scorer = createFgdReferencePolicy({ workload }).forPod(pod({ gpuMilli: 500 }));
    // GPU 2 has 500 free: filling it leaves three whole GPUs; any other breaks a whole one.
    expect(scorer.devices(node)).toEqual([{ index: 2, milli: 500 }]);
    const empty = createGpuNode({ name: "e", cpuMilli: 64_000, memMiB: 262_144, gpus: 4 });
    expect(scorer.devices(empty)).toEqual([{ index: 0, milli: 500 }]);
    expect(scorer.score(node)).toBeGreaterThan(scorer.score(empty));
  });

  it("counts all free GPU share of a node as fragmentation for typical pods that cannot use its model", () => {
    const workload = [...many(50, { gpus: 1, models: ["T4"] }), ...many(50, { gpus: 1 })];
    const policy = createFgdReferencePolicy({ workload });
    const t4 = createGpuNode({ name: "t4", model: "T4", cpuMilli: 64_000, memMiB: 262_144, gpus: 2 });
    const g2 = createGpuNode({ name: "g2", model: "G2", cpuMilli: 64_000, memMiB: 262_144, gpus: 2 });
    // A whole GPU taken: on T4 no type loses anything (change 0); on G2 the T4-only half of the mix
    // already counted the whole node, and now counts 1000 less: fragmentation falls by 500.
    const scorer = policy.forPod(pod({ gpus: 1 }));
    expect(scorer.score(t4)).toBe(50);
    expect(scorer.score(g2)).toBe(fgdScore(1000, 500));
  });

  it("scores a CPU-only pod by the fragmentation its CPU request causes", () => {
    const workload = [...many(90, { gpus: 1, cpuMilli: 16_000 }), ...many(10, { cpuMilli: 16_000 })];
    const scorer = createFgdReferencePolicy({ workload }).forPod(pod({ cpuMilli: 16_000 }));
    const roomy = createGpuNode({ name: "r", cpuMilli: 64_000, memMiB: 262_144, gpus: 2 });
    const tight = createGpuNode({ name: "t", cpuMilli: 24_000, memMiB: 262_144, gpus: 2 });
    // On `tight`, 8 cores are left: the GPU pods (16 cores) are blocked and both GPUs become fragments.
    expect(scorer.score(roomy)).toBe(50);
    expect(scorer.score(tight)).toBeLessThan(50);
  });

  it("without a workload, counts its typical pods from the pods it observes", () => {
    const policy = createFgdReferencePolicy();
    const before = policy.version;
    for (const p of many(10, { gpus: 1 })) policy.observe(p);
    expect(policy.version).toBeGreaterThan(before);
    const fixed = createFgdReferencePolicy({ workload: many(10, { gpus: 1 }) });
    fixed.observe(pod({ gpuMilli: 300 }));
    expect(fixed.version).toBe(0);
  });
});
