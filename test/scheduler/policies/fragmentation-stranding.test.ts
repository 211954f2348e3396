/**
 * The fragmentation policy's stranding term: GPUs a node's remaining CPU or memory cannot feed at the
 * learned mix's CPU and memory per GPU count against a placement, so a CPU-hungry pod goes where CPU is
 * plentiful; with the term off the two nodes score the same.
 */
import { describe, expect, it } from "vitest";
import { createGpuNode } from "../../../scheduler/cluster/gpu-node.js";
import type { PodRequest } from "../../../scheduler/cluster/pod-request.js";
import { createFragmentationPolicy } from "../../../scheduler/policies/fragmentation-policy.js";

const pod = (p: Partial<PodRequest>): PodRequest => ({
  gpus: 0,
  gpuMilli: 0,
  cpuMilli: 12_000,
  memMiB: 16_384,
  models: [],
  policy: "",
  ...p,
});

describe("fragmentation: stranding term", () => {
  const cpuPod = pod({ cpuMilli: 32_000 });
  const lean = () => createGpuNode({ name: "lean", cpuMilli: 96_000, memMiB: 1_048_576, gpus: 8 });
  const rich = () => createGpuNode({ name: "rich", cpuMilli: 256_000, memMiB: 1_048_576, gpus: 8 });
  const scores = (strandingWeight: number) => {
    const policy = createFragmentationPolicy({ strandingWeight });
    // The mix: whole-GPU pods asking 12 cores each.
    for (let i = 0; i < 100; i++) policy.observe(pod({ gpus: 1 }));
    const scorer = policy.forPod(cpuPod);
    return { lean: scorer.score(lean()), rich: scorer.score(rich()) };
  };

  it("sends a CPU-hungry pod to the node whose CPU still feeds all its GPUs", () => {
    // On `lean`, 64 cores are left for 8 GPUs wanting 12 each: 8 - 64/12 = 2.67 GPUs stranded.
    const s = scores(1);
    expect(s.rich - s.lean).toBeCloseTo(8000 - (1000 * 64_000) / 12_000, 6);
  });

  it("scores both nodes the same with the term off (no type is blocked yet)", () => {
    const s = scores(0);
    expect(s.rich).toBe(s.lean);
  });
});
