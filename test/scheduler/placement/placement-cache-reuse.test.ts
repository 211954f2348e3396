/**
 * What the placement cache (scheduler/placement/placement-cache.ts) remembers and when it forgets: a node
 * is scored again only when its state changed (its generation), every node when the policy's version
 * changes; each pod shape, policy object and node list has its own scores; the least recently used shape
 * goes first, within maxShapes and maxBytes; ties within exactly TIE_EPSILON are broken as chooseBest
 * breaks them; and a stream of new shapes or node lists reuses the arrays of dropped entries instead of
 * allocating new ones (the off-heap memory that made V8 pause). Through all of it, the choice is
 * chooseBest(evaluateNodes(...))'s.
 */
import { describe, expect, it } from "vitest";
import { candidatePlacements } from "../../../scheduler/cluster/fit.js";
import { allocate, createGpuNode, type GpuNode } from "../../../scheduler/cluster/gpu-node.js";
import type { PodRequest } from "../../../scheduler/cluster/pod-request.js";
import { chooseBest, evaluateNodes, TIE_EPSILON } from "../../../scheduler/placement/evaluate.js";
import { createPlacementCache, type PlacementCache } from "../../../scheduler/placement/placement-cache.js";
import type { PlacementPolicy } from "../../../scheduler/policies/placement-policy.js";

const node = (name: string, gpus = 4) =>
  createGpuNode({ name, model: "H100", cpuMilli: 64_000, memMiB: 262_144, gpus });
const nodesNamed = (...names: string[]) => names.map((n) => node(n));
const shape = (gpus: number, cpuMilli = 1000): PodRequest => ({
  gpus,
  gpuMilli: 0,
  cpuMilli,
  memMiB: 1024,
  models: [],
  policy: "",
});

/** A policy scoring nodes by a table (changeable, with a version bump), counting the nodes it scores. */
function tablePolicy(scores: Record<string, number>) {
  let version = 0;
  const policy = {
    name: "bestfit" as const,
    get version() {
      return version;
    },
    scores,
    scoredNodes: 0,
    /** New scores: the policy's version changes. */
    rescore(next: Record<string, number>) {
      Object.assign(scores, next);
      version++;
    },
    observe() {},
    forPod: (r: PodRequest) => ({
      score: (n: GpuNode) => {
        policy.scoredNodes++;
        return scores[n.name] ?? 0;
      },
      devices: (n: GpuNode) => candidatePlacements(n, r)[0] ?? [],
    }),
  };
  return policy satisfies PlacementPolicy;
}

/** Picks through the cache and checks it against evaluating every node; returns the node's name. */
function pick(
  cache: PlacementCache,
  nodes: readonly GpuNode[],
  req: PodRequest,
  policy: PlacementPolicy,
  r = 0,
) {
  const want = chooseBest(evaluateNodes(nodes, req, policy), () => r);
  const got = cache.pickBest(nodes, req, policy, () => r);
  expect(got?.node).toBe(want?.node);
  expect(got?.score).toBe(want?.score);
  expect(got?.devices).toEqual(want?.devices);
  expect(got?.fit).toEqual(want?.fit);
  return got?.node.name;
}

describe("placement cache: what it scores again", () => {
  it("only the nodes whose state changed since the last pod of the same shape", () => {
    const nodes = nodesNamed("a", "b", "c", "d", "e");
    const policy = tablePolicy({ a: 1, b: 5, c: 3, d: 2, e: 4 });
    const cache = createPlacementCache();
    expect(cache.evaluations).toEqual({ scored: 0, cached: 0 });
    expect(cache.pickBest(nodes, shape(1), policy, () => 0)?.node.name).toBe("b");
    expect(cache.evaluations).toEqual({ scored: 5, cached: 0 });
    expect(cache.pickBest(nodes, shape(1), policy, () => 0)?.node.name).toBe("b");
    expect(cache.evaluations).toEqual({ scored: 5, cached: 5 });
    // b fills up: it alone is checked again, and no longer fits.
    allocate(
      nodes[1] as GpuNode,
      0,
      0,
      [0, 1, 2, 3].map((index) => ({ index, milli: 1000 })),
    );
    expect(cache.pickBest(nodes, shape(1), policy, () => 0)?.node.name).toBe("e");
    expect(cache.evaluations).toEqual({ scored: 6, cached: 9 });
    expect(policy.scoredNodes).toBe(5); // b did not fit: not scored
    expect(cache.size).toBe(1);
  });

  it("every node when the policy's version changes, and the choice follows the new scores", () => {
    const nodes = nodesNamed("a", "b", "c");
    const policy = tablePolicy({ a: 1, b: 2, c: 3 });
    const cache = createPlacementCache();
    expect(pick(cache, nodes, shape(1), policy)).toBe("c");
    policy.rescore({ a: 9 });
    expect(pick(cache, nodes, shape(1), policy)).toBe("a");
    expect(cache.evaluations).toEqual({ scored: 6, cached: 0 });
    expect(pick(cache, nodes, shape(1), policy)).toBe("a");
    expect(cache.evaluations).toEqual({ scored: 6, cached: 3 });
  });

  it("each pod shape has its own scores and verdicts", () => {
    const nodes = [node("small", 1), node("big", 8)];
    const policy = tablePolicy({ small: 10, big: 1 });
    const cache = createPlacementCache();
    expect(pick(cache, nodes, shape(2), policy)).toBe("big"); // small cannot hold 2 GPUs
    expect(pick(cache, nodes, shape(1), policy)).toBe("small");
    expect(pick(cache, nodes, shape(0, 2000), policy)).toBe("small");
    expect(cache.size).toBe(3);
    expect(cache.evaluations).toEqual({ scored: 6, cached: 0 });
    for (const req of [shape(2), shape(1), shape(0, 2000)]) pick(cache, nodes, req, policy);
    expect(cache.evaluations).toEqual({ scored: 6, cached: 6 });
    // Accepted models are part of the shape.
    expect(pick(cache, nodes, { ...shape(1), models: ["A100"] }, policy)).toBeUndefined();
    expect(pick(cache, nodes, { ...shape(1), models: ["H100"] }, policy)).toBe("small");
    expect(pick(cache, nodes, { ...shape(1), models: ["H1", "00"] }, policy)).toBeUndefined();
  });

  it("another policy object of the same name does not share the first one's scores", () => {
    const nodes = nodesNamed("a", "b");
    const cache = createPlacementCache();
    expect(pick(cache, nodes, shape(1), tablePolicy({ a: 1, b: 2 }))).toBe("b");
    expect(pick(cache, nodes, shape(1), tablePolicy({ a: 2, b: 1 }))).toBe("a");
    expect(cache.size).toBe(1);
  });

  it("the same shape over a longer node list considers every node of it", () => {
    const [a, b, c] = nodesNamed("a", "b", "c") as [GpuNode, GpuNode, GpuNode];
    const policy = tablePolicy({ a: 1, b: 2, c: 3 });
    const cache = createPlacementCache();
    expect(pick(cache, [a, b], shape(1), policy)).toBe("b");
    expect(pick(cache, [a, b, c], shape(1), policy)).toBe("c");
    expect(pick(cache, [c, a], shape(1), policy)).toBe("c");
    expect(pick(cache, [b, a], shape(1), policy)).toBe("b");
  });
});

describe("placement cache: what it forgets", () => {
  it("the least recently used shape first", () => {
    const nodes = nodesNamed("a", "b", "c");
    const policy = tablePolicy({ a: 1, b: 2, c: 3 });
    const cache = createPlacementCache({ maxShapes: 2 });
    const [A, B, C] = [shape(1), shape(2), shape(3)];
    pick(cache, nodes, A, policy);
    pick(cache, nodes, B, policy);
    pick(cache, nodes, A, policy); // A used after B: B is now the oldest
    pick(cache, nodes, C, policy); // drops B
    expect(cache.size).toBe(2);
    expect(cache.evaluations).toEqual({ scored: 9, cached: 3 });
    pick(cache, nodes, A, policy); // still cached
    expect(cache.evaluations).toEqual({ scored: 9, cached: 6 });
    pick(cache, nodes, B, policy); // scored again (and drops C)
    expect(cache.evaluations).toEqual({ scored: 12, cached: 6 });
    pick(cache, nodes, C, policy);
    expect(cache.evaluations).toEqual({ scored: 15, cached: 6 });
  });

  it("by default keeps 128 shapes, fewer when a node list is so long that they would take over 32 MiB", () => {
    const policy = tablePolicy({});
    const small = createPlacementCache();
    const few = nodesNamed("a", "b");
    for (let cpu = 1; cpu <= 140; cpu++) small.pickBest(few, shape(1, cpu), policy, () => 0);
    expect(small.size).toBe(128);
    // 16 bytes per node per shape: 32 MiB hold 104 shapes of 20,000 nodes (one node object repeated).
    const large = createPlacementCache();
    const many = Array<GpuNode>(20_000).fill(node("x"));
    for (let cpu = 1; cpu <= 110; cpu++) large.pickBest(many, shape(1, cpu), policy, () => 0);
    expect(large.size).toBe(104);
    // At least the shape in use, whatever the bounds.
    const tiny = createPlacementCache({ maxShapes: 0, maxBytes: 1 });
    expect(tiny.pickBest(few, shape(1), policy, () => 0)?.node.name).toBe("a");
    expect(tiny.size).toBe(1);
  });

  it("a dropped entry's arrays serve a later node list only if of the same length", () => {
    const policy = tablePolicy({ w: 10, z: 5 });
    const [x, y, z, w] = nodesNamed("x", "y", "z", "w") as [GpuNode, GpuNode, GpuNode, GpuNode];
    const cache = createPlacementCache({ maxShapes: 1 });
    expect(pick(cache, [x, y], shape(1), policy)).toBe("x");
    expect(pick(cache, [x, y, z, w], shape(2), policy)).toBe("w"); // drops the 2-node entry
    expect(pick(cache, [x, y, z, w], shape(3), policy)).toBe("w");
    expect(pick(cache, [x, y, z], shape(1), policy)).toBe("z");
    expect(pick(cache, [w, z, y, x], shape(2), policy)).toBe("w");
    expect(pick(cache, [y, x], shape(2), policy)).toBe("y");
  });
});

describe("placement cache: ties", () => {
  it("scores exactly TIE_EPSILON apart tie, and one draw picks among them in list order", () => {
    const nodes = [...nodesNamed("n0", "n1", "n2"), node("none", 0), node("low")];
    const policy = tablePolicy({ n0: 0, n1: TIE_EPSILON, n2: 0.5 * TIE_EPSILON, low: -1 });
    const cache = createPlacementCache();
    expect([0, 0.34, 0.67, 0.999].map((r) => pick(cache, nodes, shape(1), policy, r))).toEqual([
      "n0",
      "n1",
      "n2",
      "n2",
    ]);
    // Twice TIE_EPSILON above: a better score, alone.
    const better = tablePolicy({ n0: 0, n1: 2 * TIE_EPSILON, n2: 0 });
    expect([0, 0.999].map((r) => pick(createPlacementCache(), nodes, shape(1), better, r))).toEqual([
      "n1",
      "n1",
    ]);
    // The best score raised late in the list: ties counted from there.
    const late = tablePolicy({ n0: 1, n1: 1, n2: 3, low: 3 });
    expect([0, 0.5].map((r) => pick(createPlacementCache(), nodes, shape(1), late, r))).toEqual([
      "n2",
      "low",
    ]);
  });
});

describe("placement cache: memory", () => {
  /** Float64Arrays made while `run` runs (the cache's per-node arrays, outside the JavaScript heap). */
  function arraysMade(run: () => void): number {
    const Real = globalThis.Float64Array;
    let made = 0;
    class Counting extends Real {
      // biome-ignore lint/suspicious/noExplicitAny: forwards whatever Float64Array takes
      constructor(...args: any[]) {
        // biome-ignore lint/suspicious/noExplicitAny: as above
        super(...(args as [any]));
        made++;
      }
    }
    globalThis.Float64Array = Counting as Float64ArrayConstructor;
    try {
      run();
    } finally {
      globalThis.Float64Array = Real;
    }
    return made;
  }

  it("a stream of new shapes reuses the arrays of the shapes it drops", () => {
    const nodes = nodesNamed("a", "b", "c");
    const policy = tablePolicy({ b: 1 });
    const cache = createPlacementCache({ maxShapes: 2 });
    const made = arraysMade(() => {
      for (let cpu = 1; cpu <= 50; cpu++) expect(pick(cache, nodes, shape(1, cpu), policy)).toBe("b");
    });
    // Two arrays for each of the two shapes kept and for the one being added before the oldest goes.
    expect(made).toBe(6);
  });

  it("so does one shape over a new node list each time (a new NodeNames text)", () => {
    const policy = tablePolicy({ c: 1 });
    const cache = createPlacementCache();
    const made = arraysMade(() => {
      for (let i = 0; i < 20; i++) expect(pick(cache, nodesNamed("a", "b", "c"), shape(1), policy)).toBe("c");
    });
    expect(made).toBe(2);
  });
});
