/**
 * The contract every placement policy keeps (one case list, run against each policy, as hono's router
 * tests run against every router): on random clusters and pods, scoring is finite, deterministic and
 * leaves the node untouched; the devices it picks are one of the pod's legal placements on that node
 * (whole free GPUs inside one NVLink domain, or one GPU with room for the share); placing every pod where
 * the policy scores highest never over-commits a GPU; and each policy prefers what its name says.
 */
import { describe, expect, it } from "vitest";
import { createRng } from "../../../common/random.js";
import { candidatePlacements, checkFit } from "../../../scheduler/cluster/fit.js";
import { allocate, createGpuNode, type GpuNode } from "../../../scheduler/cluster/gpu-node.js";
import type { PodRequest } from "../../../scheduler/cluster/pod-request.js";
import { POLICY_NAMES, type PolicyName } from "../../../scheduler/policies/placement-policy.js";
import { createPolicy } from "../../../scheduler/policies/policies.js";

const pod = (p: Partial<PodRequest>): PodRequest => ({
  gpus: 0,
  gpuMilli: 0,
  cpuMilli: 1000,
  memMiB: 1024,
  models: [],
  policy: "",
  ...p,
});

function randomPod(rng: () => number): PodRequest {
  const kind = rng();
  if (kind < 0.4) return pod({ gpuMilli: 50 + Math.floor(rng() * 900) });
  if (kind < 0.8) return pod({ gpus: [1, 1, 2, 4, 8][Math.floor(rng() * 5)] as number });
  return pod({ cpuMilli: 500 + Math.floor(rng() * 8000) });
}

/** Nodes of 2, 4 or 8 GPUs, with or without NVLink domains, some GPUs already partly taken. */
function randomCluster(rng: () => number, n: number): GpuNode[] {
  return Array.from({ length: n }, (_, i) => {
    const node = createGpuNode({
      name: `n${i}`,
      model: "H100",
      cpuMilli: 96_000,
      memMiB: 1_048_576,
      gpus: [2, 4, 8][Math.floor(rng() * 3)] as number,
      nvlinkDomainSize: rng() < 0.5 ? 0 : 2,
    });
    for (let g = 0; g < node.free.length; g++)
      if (rng() < 0.3) allocate(node, 0, 0, [{ index: g, milli: 100 * Math.ceil(rng() * 9) }]);
    return node;
  });
}

const sameDevices = (a: readonly { index: number; milli: number }[], b: typeof a) =>
  a.length === b.length && a.every((d, i) => d.index === b[i]?.index && d.milli === b[i]?.milli);

/** On a cluster of one empty node and one node with half of each GPU taken, which one a 1/4-GPU pod goes to. */
const PREFERS: Partial<Record<PolicyName, "empty" | "used">> = {
  spread: "empty",
  binpack: "used",
  bestfit: "used",
};

describe.each(POLICY_NAMES)("placement policy %s", (name) => {
  it("scores finitely and deterministically, touches no node, and picks a legal placement", () => {
    const rng = createRng(7);
    const nodes = randomCluster(rng, 24);
    const policy = createPolicy(name);
    for (let step = 0; step < 400; step++) {
      const req = randomPod(rng);
      policy.observe(req);
      const scorer = policy.forPod(req);
      for (const node of nodes) {
        if (!checkFit(node, req).fits) continue;
        const before = { generation: node.generation, free: [...node.free], cpu: node.cpuFree };
        const score = scorer.score(node);
        expect(Number.isFinite(score), `${name}: score of ${node.name}`).toBe(true);
        expect(scorer.score(node)).toBe(score);
        const devices = scorer.devices(node);
        expect(
          candidatePlacements(node, req).some((c) => sameDevices(c, devices)),
          `${name}: ${JSON.stringify(devices)} is not a legal placement of ${JSON.stringify(req)} on ${node.name}`,
        ).toBe(true);
        expect({ generation: node.generation, free: [...node.free], cpu: node.cpuFree }).toEqual(before);
      }
    }
  });

  it("placing every pod on its best node never over-commits a GPU or a node", () => {
    const rng = createRng(11);
    const nodes = randomCluster(rng, 16);
    const policy = createPolicy(name);
    // What was taken before the test's pods: the independent count starts from it.
    const taken = new Map<string, number[]>(nodes.map((n) => [n.name, [...n.free].map((f) => 1000 - f)]));
    let placed = 0;
    for (let step = 0; step < 2000; step++) {
      const req = randomPod(rng);
      policy.observe(req);
      const scorer = policy.forPod(req);
      let best: GpuNode | undefined;
      let bestScore = Number.NEGATIVE_INFINITY;
      for (const node of nodes) {
        if (!checkFit(node, req).fits) continue;
        const s = scorer.score(node);
        if (s > bestScore) [best, bestScore] = [node, s];
      }
      if (best === undefined) continue;
      const devices = scorer.devices(best);
      allocate(best, req.cpuMilli, req.memMiB, devices);
      const t = taken.get(best.name) as number[];
      for (const d of devices) t[d.index] = (t[d.index] as number) + d.milli;
      placed++;
    }
    expect(placed).toBeGreaterThan(100);
    // An independent count of what was handed out, against the node's own accounting.
    for (const node of nodes) {
      const t = taken.get(node.name) as number[];
      for (let i = 0; i < node.free.length; i++) {
        expect(t[i]).toBeLessThanOrEqual(1000);
        expect(node.free[i]).toBe(1000 - (t[i] as number));
      }
      expect(node.cpuFree).toBeGreaterThanOrEqual(0);
    }
  });

  it.runIf(PREFERS[name] !== undefined)("prefers what its name says", () => {
    const empty = createGpuNode({ name: "a-empty", cpuMilli: 64_000, memMiB: 262_144, gpus: 4 });
    const used = createGpuNode({ name: "b-used", cpuMilli: 64_000, memMiB: 262_144, gpus: 4 });
    allocate(
      used,
      0,
      0,
      [0, 1, 2, 3].map((index) => ({ index, milli: 500 })),
    );
    const req = pod({ gpuMilli: 250 });
    const scorer = createPolicy(name).forPod(req);
    const winner = scorer.score(empty) > scorer.score(used) ? "empty" : "used";
    expect(winner).toBe(PREFERS[name]);
  });
});
