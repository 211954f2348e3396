/**
 * Whether a pod fits a node (scheduler/cluster/fit.ts), at the boundaries: a pod needing exactly what is
 * free fits and one unit more does not, for CPU, memory, whole GPUs and GPU shares; multi-GPU pods stay
 * inside an NVLink domain; "unresolvable" marks only what no eviction could fix. The reasons are the texts
 * kube-scheduler counts and shows in the pod's FailedScheduling event, checked exactly: the shared
 * constants without detail, and with detail (Explain) the node's numbers after them. And the distinct
 * placements a pod's GPUs could take.
 */
import { describe, expect, it } from "vitest";
import { candidatePlacements, checkFit, FAILURES, type Fit } from "../../../scheduler/cluster/fit.js";
import { allocate, createGpuNode, type GpuNode } from "../../../scheduler/cluster/gpu-node.js";
import type { PodRequest } from "../../../scheduler/cluster/pod-request.js";

function gpuNode(
  free: number[],
  opts: { model?: string; cpuMilli?: number; memMiB?: number; nvlink?: number; schedulable?: boolean } = {},
): GpuNode {
  const node = createGpuNode({
    name: "n",
    model: opts.model ?? "H100",
    cpuMilli: opts.cpuMilli ?? 8000,
    memMiB: opts.memMiB ?? 65_536,
    gpus: free.length,
    nvlinkDomainSize: opts.nvlink ?? 0,
    schedulable: opts.schedulable ?? true,
  });
  allocate(
    node,
    0,
    0,
    free.flatMap((f, index) => (f < 1000 ? [{ index, milli: 1000 - f }] : [])),
  );
  return node;
}

const pod = (r: Partial<PodRequest>): PodRequest => ({
  gpus: 0,
  gpuMilli: 0,
  cpuMilli: 1000,
  memMiB: 1024,
  models: [],
  policy: "",
  ...r,
});

const FITS: Fit = { fits: true, reason: "", unresolvable: false };

/** checkFit without detail must give the shared constant itself; with detail, the text and numbers. */
function expectFailure(node: GpuNode, r: PodRequest, failure: Fit, detail: string | undefined) {
  expect(checkFit(node, r)).toBe(failure);
  expect(checkFit(node, r, true)).toEqual({
    fits: false,
    reason: detail === undefined ? failure.reason : `${failure.reason}: ${detail}`,
    unresolvable: failure.unresolvable,
  });
}

describe("checkFit", () => {
  it("has the fixed reason texts kube-scheduler aggregates, resolvable by eviction or not", () => {
    expect(FAILURES).toEqual({
      model: { fits: false, reason: "GPU model not accepted", unresolvable: true },
      gpuCount: { fits: false, reason: "Too few GPUs on the node", unresolvable: true },
      nvlink: { fits: false, reason: "Pod larger than an NVLink domain", unresolvable: true },
      cpuCapacity: { fits: false, reason: "Insufficient cpu capacity", unresolvable: true },
      memCapacity: { fits: false, reason: "Insufficient memory capacity", unresolvable: true },
      notReady: { fits: false, reason: "Node not ready or cordoned", unresolvable: false },
      cpu: { fits: false, reason: "Insufficient cpu", unresolvable: false },
      mem: { fits: false, reason: "Insufficient memory", unresolvable: false },
      wholeGpus: { fits: false, reason: "Insufficient whole GPUs", unresolvable: false },
      gpuShare: { fits: false, reason: "Insufficient GPU share", unresolvable: false },
    });
  });

  it("a pod that fits gets no reason, with or without detail", () => {
    const node = gpuNode([1000, 500]);
    for (const r of [pod({}), pod({ gpus: 1 }), pod({ gpuMilli: 500 }), pod({ models: ["A100", "H100"] })]) {
      expect(checkFit(node, r)).toEqual(FITS);
      expect(checkFit(node, r, true)).toEqual(FITS);
    }
  });

  it("accepts only the listed GPU models, naming the node's model (or 'unknown') and the list", () => {
    expectFailure(
      gpuNode([1000], { model: "L4" }),
      pod({ gpus: 1, models: ["H100", "A100"] }),
      FAILURES.model,
      "L4 is not one of H100, A100",
    );
    expectFailure(
      gpuNode([1000], { model: "" }),
      pod({ models: ["H100"] }),
      FAILURES.model,
      "unknown is not one of H100",
    );
    // No list: any model, including an unknown one.
    expect(checkFit(gpuNode([1000], { model: "" }), pod({ gpus: 1 }))).toEqual(FITS);
  });

  it("a node with fewer GPUs than the pod asks can never hold it; a share needs at least one GPU", () => {
    expectFailure(gpuNode([1000, 1000]), pod({ gpus: 3 }), FAILURES.gpuCount, "needs 3, the node has 2");
    expect(checkFit(gpuNode([1000, 1000]), pod({ gpus: 2 }))).toEqual(FITS);
    expectFailure(gpuNode([]), pod({ gpuMilli: 100 }), FAILURES.gpuCount, "needs 1, the node has 0");
    expectFailure(gpuNode([]), pod({ gpus: 1 }), FAILURES.gpuCount, "needs 1, the node has 0");
    // A CPU-only pod fits a node without GPUs.
    expect(checkFit(gpuNode([]), pod({}), true)).toEqual(FITS);
  });

  it("a multi-GPU pod must fit inside one NVLink domain", () => {
    const node = gpuNode(Array(8).fill(1000), { nvlink: 4 });
    expectFailure(node, pod({ gpus: 5 }), FAILURES.nvlink, "needs 5 GPUs, domains of 4");
    expect(checkFit(node, pod({ gpus: 4 }))).toEqual(FITS);
    // Without domains the whole node is one.
    expect(checkFit(gpuNode(Array(8).fill(1000)), pod({ gpus: 8 }))).toEqual(FITS);
    // Domains of 1: only single-GPU pods.
    const singles = gpuNode([1000, 1000], { nvlink: 1 });
    expect(checkFit(singles, pod({ gpus: 1 }))).toEqual(FITS);
    expectFailure(singles, pod({ gpus: 2 }), FAILURES.nvlink, "needs 2 GPUs, domains of 1");
  });

  it("CPU and memory: the node's whole capacity fits, one more can never fit", () => {
    const node = gpuNode([1000], { cpuMilli: 8000, memMiB: 65_536 });
    expect(checkFit(node, pod({ cpuMilli: 8000, memMiB: 65_536 }))).toEqual(FITS);
    expectFailure(node, pod({ cpuMilli: 8001 }), FAILURES.cpuCapacity, "needs 8001m, the node has 8000m");
    expectFailure(
      node,
      pod({ memMiB: 65_537 }),
      FAILURES.memCapacity,
      "needs 65537 MiB, the node has 65536 MiB",
    );
  });

  it("a cordoned or unready node refuses every pod, resolvably and without numbers", () => {
    const node = gpuNode([1000], { schedulable: false });
    expectFailure(node, pod({}), FAILURES.notReady, undefined);
    expectFailure(node, pod({ gpus: 1 }), FAILURES.notReady, undefined);
    // What could never fit says so first, so that preemption skips the node.
    expect(checkFit(node, pod({ gpus: 2 }))).toBe(FAILURES.gpuCount);
    expect(checkFit(node, pod({ cpuMilli: 9000 }))).toBe(FAILURES.cpuCapacity);
  });

  it("CPU and memory: exactly the free amount fits, one more does not (until pods are evicted)", () => {
    const node = gpuNode([1000], { cpuMilli: 8000, memMiB: 65_536 });
    allocate(node, 6000, 60_000, []);
    expect(checkFit(node, pod({ cpuMilli: 2000, memMiB: 5536 }))).toEqual(FITS);
    expectFailure(node, pod({ cpuMilli: 2001, memMiB: 5536 }), FAILURES.cpu, "needs 2001m, 2000m free");
    expectFailure(node, pod({ cpuMilli: 2000, memMiB: 5537 }), FAILURES.mem, "needs 5537 MiB, 5536 MiB free");
  });

  it("whole GPUs: as many wholly free as asked fit, one more does not; partly used GPUs do not count", () => {
    const node = gpuNode([1000, 999, 1000, 0]);
    expect(checkFit(node, pod({ gpus: 2 }))).toEqual(FITS);
    expectFailure(node, pod({ gpus: 3 }), FAILURES.wholeGpus, "needs 3 together, 2 free");
    expectFailure(gpuNode([999]), pod({ gpus: 1 }), FAILURES.wholeGpus, "needs 1 together, 0 free");
  });

  it("whole GPUs with NVLink domains: they must be free together in one domain", () => {
    // Domains [1000 1000 0 0] [1000 0 1000 0]: four free, two at most together.
    const node = gpuNode([1000, 1000, 0, 0, 1000, 0, 1000, 0], { nvlink: 4 });
    expect(checkFit(node, pod({ gpus: 2 }))).toEqual(FITS);
    expectFailure(
      node,
      pod({ gpus: 3 }),
      FAILURES.wholeGpus,
      "needs 3 together, 2 free in one NVLink domain",
    );
  });

  it("a GPU share fits a GPU with at least that much free, not the sum of several", () => {
    const node = gpuNode([500, 300, 0]);
    expect(checkFit(node, pod({ gpuMilli: 500 }))).toEqual(FITS);
    expect(checkFit(node, pod({ gpuMilli: 1 }))).toEqual(FITS);
    expectFailure(
      node,
      pod({ gpuMilli: 501 }),
      FAILURES.gpuShare,
      "needs 501/1000 of a GPU, at most 500 free on one",
    );
    expectFailure(
      gpuNode([0, 0]),
      pod({ gpuMilli: 1 }),
      FAILURES.gpuShare,
      "needs 1/1000 of a GPU, at most 0 free on one",
    );
    // A whole GPU is free enough for any share; a share is not a whole GPU.
    expect(checkFit(gpuNode([1000]), pod({ gpuMilli: 999 }))).toEqual(FITS);
    expect(checkFit(gpuNode([999]), pod({ gpus: 1 }))).toBe(FAILURES.wholeGpus);
    // A CPU-only pod needs nothing of the GPUs, even when none is free.
    expect(checkFit(gpuNode([0, 0]), pod({}))).toEqual(FITS);
  });
});

describe("candidatePlacements", () => {
  const indices = (node: GpuNode, r: PodRequest) =>
    candidatePlacements(node, r).map((c) => c.map((d) => `${d.index}:${d.milli}`).join(","));

  it("a CPU-only pod has one placement with no devices", () => {
    expect(candidatePlacements(gpuNode([1000, 500]), pod({}))).toEqual([[]]);
    expect(candidatePlacements(gpuNode([]), pod({}))).toEqual([[]]);
  });

  it("a share: one GPU per distinct free amount that holds it, the lowest index of each", () => {
    const node = gpuNode([1000, 500, 1000, 500, 200, 700]);
    expect(indices(node, pod({ gpuMilli: 500 }))).toEqual(["0:500", "1:500", "5:500"]);
    expect(indices(node, pod({ gpuMilli: 701 }))).toEqual(["0:701"]);
    expect(indices(gpuNode([0, 100]), pod({ gpuMilli: 101 }))).toEqual([]);
  });

  it("whole GPUs: the lowest free ones of each NVLink domain that can hold them", () => {
    const node = gpuNode([1000, 0, 1000, 1000, 1000, 1000, 0, 1000], { nvlink: 4 });
    expect(indices(node, pod({ gpus: 2 }))).toEqual(["0:1000,2:1000", "4:1000,5:1000"]);
    expect(indices(node, pod({ gpus: 3 }))).toEqual(["0:1000,2:1000,3:1000", "4:1000,5:1000,7:1000"]);
    expect(indices(node, pod({ gpus: 1 }))).toEqual(["0:1000", "4:1000"]);
    expect(indices(node, pod({ gpus: 4 }))).toEqual([]);
    // Without domains: one placement, the lowest free GPUs of the node.
    expect(indices(gpuNode([0, 1000, 500, 1000, 1000]), pod({ gpus: 3 }))).toEqual(["1:1000,3:1000,4:1000"]);
    // A last domain shorter than the others still counts.
    expect(indices(gpuNode([0, 0, 0, 1000, 1000], { nvlink: 3 }), pod({ gpus: 2 }))).toEqual([
      "3:1000,4:1000",
    ]);
  });

  it("whole GPUs on a node without GPUs: no placement", () => {
    expect(candidatePlacements(gpuNode([]), pod({ gpus: 1 }))).toEqual([]);
    expect(candidatePlacements(gpuNode([]), pod({ gpuMilli: 10 }))).toEqual([]);
  });
});
