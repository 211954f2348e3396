/**
 * Filter and score in one pass (scheduler/placement/evaluate.ts): every node's verdict and score, the best
 * node with ties (scores within TIE_EPSILON) broken by one draw of `random`, and the 0..10 scores the
 * extender gives kube-scheduler.
 */
import { describe, expect, it } from "vitest";
import { candidatePlacements, FAILURES, type Fit } from "../../../scheduler/cluster/fit.js";
import { allocate, createGpuNode } from "../../../scheduler/cluster/gpu-node.js";
import type { PodRequest } from "../../../scheduler/cluster/pod-request.js";
import {
  chooseBest,
  type Evaluation,
  evaluateNodes,
  extenderScores,
  MAX_SCORE,
  TIE_EPSILON,
} from "../../../scheduler/placement/evaluate.js";
import type { PlacementPolicy } from "../../../scheduler/policies/placement-policy.js";

const node = (name: string, gpus = 2) =>
  createGpuNode({ name, model: "H100", cpuMilli: 8000, memMiB: 65_536, gpus });
const req: PodRequest = { gpus: 1, gpuMilli: 0, cpuMilli: 1000, memMiB: 1024, models: [], policy: "" };

/** A policy scoring each node by a table, placing first fit. */
function tablePolicy(scores: Record<string, number>): PlacementPolicy {
  return {
    name: "bestfit",
    version: 0,
    observe() {},
    forPod: (r) => ({
      score: (n) => scores[n.name] ?? 0,
      devices: (n) => candidatePlacements(n, r)[0] ?? [],
    }),
  };
}

const FITS: Fit = { fits: true, reason: "", unresolvable: false };

/** Evaluations with these scores, all fitting unless NaN. */
const evals = (...scores: number[]): Evaluation[] =>
  scores.map((score, i) => ({
    node: node(`n${i}`),
    fit: Number.isNaN(score) ? FAILURES.cpu : FITS,
    score,
    devices: [],
  }));

describe("evaluateNodes", () => {
  it("gives fitting nodes the policy's score and devices, the others NaN, no devices and the reason", () => {
    const full = node("full");
    allocate(full, 0, 0, [
      { index: 0, milli: 1000 },
      { index: 1, milli: 1000 },
    ]);
    const a = node("a", 4);
    allocate(a, 0, 0, [{ index: 0, milli: 500 }]);
    const nodes = [a, full, node("b")];
    const policy = tablePolicy({ a: 3, full: 7, b: 5 });
    const got = evaluateNodes(nodes, req, policy);
    expect(got.map((e) => ({ name: e.node.name, ...e, node: undefined }))).toEqual([
      { name: "a", fit: FITS, score: 3, devices: [{ index: 1, milli: 1000 }], node: undefined },
      { name: "full", fit: FAILURES.wholeGpus, score: Number.NaN, devices: [], node: undefined },
      { name: "b", fit: FITS, score: 5, devices: [{ index: 0, milli: 1000 }], node: undefined },
    ]);
    expect(got[1]?.fit).toBe(FAILURES.wholeGpus);
    expect(evaluateNodes(nodes, req, policy, true)[1]?.fit).toEqual({
      ...FAILURES.wholeGpus,
      reason: "Insufficient whole GPUs: needs 1 together, 0 free",
    });
    expect(chooseBest(got, () => 0)?.node.name).toBe("b");
  });
});

describe("chooseBest", () => {
  it("picks the highest score among fitting nodes, none if none fits", () => {
    expect(chooseBest(evals(1, Number.NaN, 3, 2), () => 0)?.node.name).toBe("n2");
    expect(chooseBest(evals(Number.NaN, Number.NaN), () => 0)).toBeUndefined();
    expect(chooseBest([], () => 0)).toBeUndefined();
    // Negative scores are scores too.
    expect(chooseBest(evals(-5, -2, -9), () => 0)?.node.name).toBe("n1");
  });

  it("scores exactly TIE_EPSILON apart tie; one draw of random picks among the ties in list order", () => {
    const list = evals(0, TIE_EPSILON, 0.5 * TIE_EPSILON, Number.NaN, -1);
    expect([0, 0.34, 0.67, 0.999].map((r) => chooseBest(list, () => r)?.node.name)).toEqual([
      "n0",
      "n1",
      "n2",
      "n2",
    ]);
    // A little more than TIE_EPSILON above: a better score, no tie.
    const better = evals(0, 2 * TIE_EPSILON, 0);
    expect([0, 0.999].map((r) => chooseBest(better, () => r)?.node.name)).toEqual(["n1", "n1"]);
  });
});

describe("extenderScores", () => {
  it("maps the fitting nodes' scores linearly onto 0..10, best 10, worst 0, rounded; others 0", () => {
    expect(extenderScores(evals(2, Number.NaN, 12, 5, 7.5))).toEqual([
      { host: "n0", score: 0 },
      { host: "n1", score: 0 },
      { host: "n2", score: MAX_SCORE },
      { host: "n3", score: 3 },
      { host: "n4", score: 6 },
    ]);
    expect(extenderScores(evals(-3, -1, -2))).toEqual([
      { host: "n0", score: 0 },
      { host: "n1", score: 10 },
      { host: "n2", score: 5 },
    ]);
  });

  it("gives every fitting node 10 when they all score the same", () => {
    expect(extenderScores(evals(4, Number.NaN, 4))).toEqual([
      { host: "n0", score: 10 },
      { host: "n1", score: 0 },
      { host: "n2", score: 10 },
    ]);
    expect(extenderScores(evals(1))).toEqual([{ host: "n0", score: 10 }]);
  });
});
