/**
 * The placement cache chooses exactly what evaluating every node chooses (node, devices, score, the
 * same draw of `random` among ties), pod after pod, while nodes fill up, free up, get cordoned and get rebuilt, and
 * while the fragmentation policy's learned mix changes; and the fit reasons kube-scheduler sees are the
 * fixed texts it aggregates.
 */
import { describe, expect, it } from "vitest";
import { createRng } from "../../../common/random.js";
import { createClusterState } from "../../../scheduler/cluster/cluster-state.js";
import { checkFit, FAILURES } from "../../../scheduler/cluster/fit.js";
import { allocate, type GpuNode, release } from "../../../scheduler/cluster/gpu-node.js";
import type { PodRequest } from "../../../scheduler/cluster/pod-request.js";
import { chooseBest, evaluateNodes } from "../../../scheduler/placement/evaluate.js";
import { createPlacementCache } from "../../../scheduler/placement/placement-cache.js";
import { POLICY_NAMES } from "../../../scheduler/policies/placement-policy.js";
import { createPolicy } from "../../../scheduler/policies/policies.js";

const SHAPES: PodRequest[] = [
  { gpus: 1, gpuMilli: 0, cpuMilli: 4000, memMiB: 16_384, models: [], policy: "" },
  { gpus: 2, gpuMilli: 0, cpuMilli: 8000, memMiB: 32_768, models: [], policy: "" },
  { gpus: 0, gpuMilli: 470, cpuMilli: 2000, memMiB: 8192, models: [], policy: "" },
  { gpus: 0, gpuMilli: 810, cpuMilli: 3152, memMiB: 5600, models: [], policy: "" },
  { gpus: 0, gpuMilli: 0, cpuMilli: 16_000, memMiB: 65_536, models: [], policy: "" },
  { gpus: 1, gpuMilli: 0, cpuMilli: 4000, memMiB: 16_384, models: ["A100"], policy: "" },
];

/** What the informers would report for a node, as it is. */
const infoOf = (node: GpuNode) => ({
  name: node.name,
  model: node.model,
  cpuMilli: node.cpuMilli,
  memMiB: node.memMiB,
  gpus: node.free.length,
  nvlinkDomainSize: node.nvlinkDomainSize,
  schedulable: node.schedulable,
});

function cluster(nodes: number) {
  const state = createClusterState();
  for (let i = 0; i < nodes; i++) {
    state.upsertNode({
      name: `n${i}`,
      model: i % 3 === 0 ? "A100" : "H100",
      cpuMilli: 64_000,
      memMiB: 262_144,
      gpus: i % 5 === 0 ? 4 : 8,
      nvlinkDomainSize: i % 4 === 0 ? 4 : 0,
      schedulable: true,
    });
  }
  return state;
}

describe("placement cache", () => {
  for (const name of POLICY_NAMES) {
    it(`makes the choice of evaluating every node, pod by pod (${name})`, () => {
      const state = cluster(60);
      const cached = createPlacementCache({ maxShapes: 4 }); // fewer than the shapes: evictions too
      const policy = createPolicy(name);
      const events = createRng(7);
      // The two sides draw from generators in the same state, so equal picks mean equal draws.
      const randomA = createRng(99);
      const randomB = createRng(99);
      const placed: {
        node: GpuNode;
        req: PodRequest;
        devices: readonly { index: number; milli: number }[];
      }[] = [];
      let nodes = [...state.nodes.values()];
      let decisions = 0;
      for (let step = 0; step < 1500; step++) {
        const roll = events();
        if (roll < 0.15 && placed.length > 0) {
          // A pod ends.
          const [gone] = placed.splice(Math.floor(events() * placed.length), 1);
          if (gone) release(gone.node, gone.req.cpuMilli, gone.req.memMiB, gone.devices);
          continue;
        }
        if (roll < 0.17) {
          // A node is cordoned or uncordoned.
          const node = nodes[Math.floor(events() * nodes.length)] as GpuNode;
          state.upsertNode({ ...infoOf(node), schedulable: !node.schedulable });
          continue;
        }
        if (roll < 0.175) {
          // A node is rebuilt with more memory (a new object, empty): the list is built again.
          const node = nodes[Math.floor(events() * nodes.length)] as GpuNode;
          state.upsertNode({ ...infoOf(node), memMiB: node.memMiB * 2, schedulable: true });
          for (let i = placed.length - 1; i >= 0; i--) if (placed[i]?.node === node) placed.splice(i, 1);
          nodes = [...state.nodes.values()];
          continue;
        }
        const req = SHAPES[Math.floor(events() * SHAPES.length)] as PodRequest;
        policy.observe(req); // changes the fragmentation policy's version now and then
        const want = chooseBest(evaluateNodes(nodes, req, policy), randomA);
        const got = cached.pickBest(nodes, req, policy, randomB);
        expect(got?.node.name).toBe(want?.node.name);
        expect(got?.devices).toEqual(want?.devices);
        expect(got?.score).toBe(want?.score);
        if (want === undefined) continue;
        decisions++;
        allocate(want.node, req.cpuMilli, req.memMiB, want.devices);
        placed.push({ node: want.node, req, devices: want.devices });
      }
      expect(decisions).toBeGreaterThan(500);
      expect(randomA()).toBe(randomB());
      expect(cached.size).toBeLessThanOrEqual(4);
    });
  }

  it("keeps its scores within a memory bound", () => {
    const nodes = [...cluster(60).nodes.values()];
    // 16 bytes per node per shape: 2,000 bytes hold two shapes of 60 nodes.
    const cached = createPlacementCache({ maxShapes: 10, maxBytes: 2000 });
    const policy = createPolicy("bestfit");
    for (const req of SHAPES) cached.pickBest(nodes, req, policy, () => 0);
    expect(cached.size).toBe(2);
  });
});

describe("fit reasons", () => {
  it("are fixed texts for kube-scheduler and carry the numbers only on request", () => {
    const state = cluster(1);
    const node = state.nodes.get("n0") as GpuNode;
    const tooBig: PodRequest = { gpus: 0, gpuMilli: 0, cpuMilli: 100_000, memMiB: 1, models: [], policy: "" };
    expect(checkFit(node, tooBig)).toBe(FAILURES.cpuCapacity);
    expect(checkFit(node, tooBig, true)).toEqual({
      fits: false,
      unresolvable: true,
      reason: "Insufficient cpu capacity: needs 100000m, the node has 64000m",
    });
    allocate(
      node,
      0,
      0,
      [0, 1, 2].map((index) => ({ index, milli: 1000 })),
    );
    const two: PodRequest = { gpus: 2, gpuMilli: 0, cpuMilli: 1, memMiB: 1, models: [], policy: "" };
    expect(checkFit(node, two)).toBe(FAILURES.wholeGpus); // one whole GPU left
    expect(checkFit(node, two, true).reason).toBe(
      "Insufficient whole GPUs: needs 2 together, 1 free in one NVLink domain",
    );
  });
});
