/**
 * Device-level accounting: whole GPUs and shares are never over-committed, whatever the order of events:
 * random placements, assumptions in flight that expire or get confirmed, restarts that rebuild the cache
 * from pods' device annotations, pods bound by others, nodes that shrink.
 */

import { create } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { createRng } from "../../../common/random.js";
import { PodSchema } from "../../../gen/es/kinfer/scheduling/v1/scheduling_pb.js";
import { createClusterState, type PlacedPod } from "../../../scheduler/cluster/cluster-state.js";
import { candidatePlacements, checkFit } from "../../../scheduler/cluster/fit.js";
import type { GpuNode } from "../../../scheduler/cluster/gpu-node.js";
import {
  formatDevices,
  PodRequestError,
  parseDevices,
  readPodRequest,
} from "../../../scheduler/cluster/pod-request.js";
import { parseQuantity } from "../../../scheduler/cluster/quantity.js";

const node = (name: string, gpus = 4) => ({
  name,
  model: "H100",
  cpuMilli: 64_000,
  memMiB: 512_000,
  gpus,
  nvlinkDomainSize: 0,
  schedulable: true,
});
const req = (gpus: number, gpuMilli: number, cpuMilli = 1000) => ({
  gpus,
  gpuMilli,
  cpuMilli,
  memMiB: 1024,
  models: [],
  policy: "",
});

describe("quantities and pod requests", () => {
  it("parses Kubernetes quantities", () => {
    expect(parseQuantity("500m")).toBe(0.5);
    expect(parseQuantity("2")).toBe(2);
    expect(parseQuantity("1.5Gi")).toBe(1.5 * 2 ** 30);
    expect(parseQuantity("16e3")).toBe(16_000);
    expect(parseQuantity("64k")).toBe(64_000);
    expect(() => parseQuantity("lots")).toThrow(RangeError);
    expect(() => parseQuantity("1.2.3")).toThrow(RangeError);
  });

  it("reads whole GPUs, shares, CPU, memory, models and policy from a pod", () => {
    const pod = create(PodSchema, {
      metadata: {
        annotations: { "kinfer.io/gpu-models": "H100, A100", "kinfer.io/placement-policy": "binpack" },
      },
      spec: {
        containers: [
          { resources: { requests: { cpu: "1500m", memory: "2Gi" }, limits: { "nvidia.com/gpu": "2" } } },
          { resources: { requests: { cpu: "500m", memory: "1Gi" } } },
        ],
        initContainers: [{ resources: { requests: { cpu: "4", memory: "512Mi" } } }],
      },
    });
    expect(readPodRequest(pod)).toEqual({
      gpus: 2,
      gpuMilli: 0,
      cpuMilli: 4000,
      memMiB: 3072,
      models: ["H100", "A100"],
      policy: "binpack",
    });
    const share = create(PodSchema, { metadata: { annotations: { "kinfer.io/gpu-milli": "250" } } });
    expect(readPodRequest(share)).toMatchObject({ gpus: 0, gpuMilli: 250 });
    // Millicores and MiB come out exact (0.009 * 1000 is 9.000000000000002 in floating point), and
    // fractions are rounded up.
    const cpu = (q: string, memory = "1Mi") =>
      readPodRequest(
        create(PodSchema, { spec: { containers: [{ resources: { requests: { cpu: q, memory } } }] } }),
      );
    for (const m of [1, 9, 13, 1100, 3153, 199_999]) expect(cpu(`${m}m`).cpuMilli).toBe(m);
    expect(cpu("0.0001").cpuMilli).toBe(1);
    expect(cpu("1", "1G").memMiB).toBe(954);
    expect(() =>
      readPodRequest(
        create(PodSchema, {
          metadata: { annotations: { "kinfer.io/gpu-milli": "250" } },
          spec: { containers: [{ resources: { limits: { "nvidia.com/gpu": "2" } } }] },
        }),
      ),
    ).toThrow(PodRequestError);
    expect(() =>
      readPodRequest(
        create(PodSchema, { spec: { containers: [{ resources: { requests: { cpu: "x" } } }] } }),
      ),
    ).toThrow(/not a quantity/);
  });

  it("round-trips the devices annotation and rejects malformed ones", () => {
    expect(
      parseDevices(
        formatDevices([
          { index: 0, milli: 1000 },
          { index: 3, milli: 250 },
        ]),
      ),
    ).toEqual([
      { index: 0, milli: 1000 },
      { index: 3, milli: 250 },
    ]);
    expect(() => parseDevices("0:2000")).toThrow(PodRequestError);
    expect(() => parseDevices("zero")).toThrow(PodRequestError);
  });
});

describe("fit", () => {
  it("keeps multi-GPU pods inside one NVLink domain", () => {
    const state = createClusterState();
    state.upsertNode({ ...node("n", 8), nvlinkDomainSize: 4 });
    const n = state.nodes.get("n");
    if (n === undefined) throw new Error("no node");
    expect(checkFit(n, req(6, 0))).toMatchObject({ fits: false, unresolvable: true });
    state.upsertPod({
      uid: "a",
      key: "a",
      node: "n",
      request: req(1, 0),
      devices: [{ index: 0, milli: 1000 }],
    });
    state.upsertPod({
      uid: "b",
      key: "b",
      node: "n",
      request: req(1, 0),
      devices: [{ index: 5, milli: 1000 }],
    });
    // 6 GPUs free, but 3 in each domain: a 4-GPU pod does not fit.
    expect(checkFit(n, req(4, 0))).toMatchObject({ fits: false, unresolvable: false });
    expect(candidatePlacements(n, req(3, 0)).map((c) => c.map((d) => d.index))).toEqual([
      [1, 2, 3],
      [4, 6, 7],
    ]);
  });
});

/** The node's aggregates (GpuNode.freeMilli and the rest) agree with its GPUs. */
function expectAggregatesInStep(n: GpuNode) {
  const free = [...n.free];
  const domain = n.nvlinkDomainSize > 0 ? n.nvlinkDomainSize : free.length;
  const inDomains = Array.from({ length: Math.ceil(free.length / domain) }, (_, d) =>
    free.slice(d * domain, (d + 1) * domain).filter((f) => f === 1000),
  );
  expect({
    freeMilli: n.freeMilli,
    wholeFree: n.wholeFree,
    wholeFreeInDomain: n.wholeFreeInDomain,
    maxFree: n.maxFree,
    freeSorted: [...n.freeSorted],
  }).toEqual({
    freeMilli: free.reduce((a, b) => a + b, 0),
    wholeFree: free.filter((f) => f === 1000).length,
    wholeFreeInDomain: Math.max(0, ...inDomains.map((d) => d.length)),
    maxFree: Math.max(0, ...free),
    freeSorted: [...free].sort((a, b) => a - b),
  });
}

describe("accounting", () => {
  it("never over-commits under random placements, assumptions, expiries and removals", () => {
    let now = 0;
    const state = createClusterState(() => now);
    for (let i = 0; i < 5; i++) state.upsertNode({ ...node(`n${i}`), nvlinkDomainSize: i % 2 === 0 ? 0 : 2 });
    const random = createRng(7);
    const live = new Set<string>();
    for (let step = 0; step < 5000; step++) {
      now += 10;
      const action = random();
      const uid = `p${Math.floor(random() * 300)}`;
      const name = `n${Math.floor(random() * 5)}`;
      const n = state.nodes.get(name);
      if (n === undefined) throw new Error("no node");
      const r =
        random() < 0.5 ? req(1 + Math.floor(random() * 3), 0) : req(0, 100 + Math.floor(random() * 900));
      if (action < 0.4) {
        const fit = checkFit(n, r);
        if (fit.fits) {
          const devices = candidatePlacements(n, r)[0] ?? [];
          state.assume({ uid, key: uid, node: name, request: r }, devices, 500);
          live.add(uid);
        }
      } else if (action < 0.7) {
        // A pod seen bound: from an assumption (confirmed) or bound by someone else (first fit).
        const devices = state.upsertPod({ uid, key: uid, node: name, request: r });
        if (devices !== undefined) live.add(uid);
      } else if (action < 0.9) {
        state.removePod(uid);
        live.delete(uid);
      } else {
        state.expireAssumed();
      }
      // The oracle: what the pods the cache holds add up to, computed from the pods themselves. Every
      // GPU's free share must be exactly 1000 minus the shares held on it, never negative (an over-commit)
      // and never more (a release counted twice); CPU and memory likewise; and every pod it holds is one
      // this test placed and has not removed.
      const used = new Map<string, { gpu: number[]; cpu: number; mem: number }>();
      for (const pod of state.pods()) {
        expect(live.has(pod.uid), `${pod.uid} held but removed`).toBe(true);
        const u = used.get(pod.node) ?? { gpu: [0, 0, 0, 0], cpu: 0, mem: 0 };
        for (const d of state.devicesOf(pod.uid) ?? []) u.gpu[d.index] = (u.gpu[d.index] ?? 0) + d.milli;
        u.cpu += pod.request.cpuMilli;
        u.mem += pod.request.memMiB;
        used.set(pod.node, u);
      }
      for (const gpuNode of state.nodes.values()) {
        const u = used.get(gpuNode.name) ?? { gpu: [0, 0, 0, 0], cpu: 0, mem: 0 };
        for (const held of u.gpu) expect(held).toBeLessThanOrEqual(1000);
        expect([...gpuNode.free]).toEqual(u.gpu.map((held) => 1000 - held));
        expect(gpuNode.cpuFree).toBe(gpuNode.cpuMilli - u.cpu);
        expect(gpuNode.memFree).toBe(gpuNode.memMiB - u.mem);
        expectAggregatesInStep(gpuNode);
      }
    }
    for (const uid of [...live]) state.removePod(uid);
    state.expireAssumed();
    for (const gpuNode of state.nodes.values()) expect([...gpuNode.free]).toEqual([1000, 1000, 1000, 1000]);
  });

  it("an assumption counts until confirmed, and is dropped if the pod never shows up bound", () => {
    let now = 0;
    const state = createClusterState(() => now);
    state.upsertNode(node("n", 2));
    const pod: PlacedPod = { uid: "u", key: "ns/p", node: "n", request: req(2, 0) };
    state.assume(
      pod,
      [
        { index: 0, milli: 1000 },
        { index: 1, milli: 1000 },
      ],
      1000,
    );
    const n = state.nodes.get("n");
    expect(n && checkFit(n, req(1, 0)).fits).toBe(false);
    now = 999;
    expect(state.expireAssumed()).toBe(0);
    now = 1000;
    expect(state.expireAssumed()).toBe(1);
    expect(n && checkFit(n, req(1, 0)).fits).toBe(true);
    // Confirmed before expiry: stays.
    state.assume(
      pod,
      [
        { index: 0, milli: 1000 },
        { index: 1, milli: 1000 },
      ],
      1000,
    );
    state.upsertPod(pod);
    now = 10_000;
    expect(state.expireAssumed()).toBe(0);
    expect(state.podCount).toBe(1);
  });

  it("a restarted scheduler rebuilds the same devices from the pods' annotations", () => {
    const first = createClusterState();
    first.upsertNode(node("n"));
    const pods: PlacedPod[] = [
      { uid: "a", key: "a", node: "n", request: req(0, 300), devices: [{ index: 2, milli: 300 }] },
      { uid: "b", key: "b", node: "n", request: req(0, 700), devices: [{ index: 2, milli: 700 }] },
      {
        uid: "c",
        key: "c",
        node: "n",
        request: req(2, 0),
        devices: [
          { index: 0, milli: 1000 },
          { index: 3, milli: 1000 },
        ],
      },
    ];
    for (const p of pods) first.upsertPod(p);
    const restarted = createClusterState();
    for (const p of pods) restarted.upsertPod(p); // informers may deliver pods before their node
    restarted.upsertNode(node("n"));
    expect([...(restarted.nodes.get("n")?.free ?? [])]).toEqual([...(first.nodes.get("n")?.free ?? [])]);
    expect([...(restarted.nodes.get("n")?.free ?? [])]).toEqual([0, 1000, 0, 0]);
    // An annotation that claims an over-committed device is not trusted: first fit instead.
    const liar = restarted.upsertPod({
      uid: "d",
      key: "d",
      node: "n",
      request: req(0, 500),
      devices: [{ index: 2, milli: 500 }],
    });
    expect(liar).toEqual([{ index: 1, milli: 500 }]);
  });

  it("pods without devices get them inside one NVLink domain when one has room, else any free GPUs", () => {
    const state = createClusterState();
    state.upsertNode({ ...node("n", 8), nvlinkDomainSize: 4 });
    const bound = (uid: string, gpus: number, gpuMilli = 0) =>
      state.upsertPod({ uid, key: uid, node: "n", request: req(gpus, gpuMilli) });
    expect(bound("share", 0, 500)).toEqual([{ index: 0, milli: 500 }]);
    // GPU 0 is partly taken: a 4-GPU pod takes the second domain, not GPUs 1-4.
    expect(bound("four", 4)?.map((d) => d.index)).toEqual([4, 5, 6, 7]);
    state.removePod("four");
    expect(bound("one", 1)).toEqual([{ index: 1, milli: 1000 }]);
    expect(bound("five", 5)?.map((d) => d.index)).toEqual([2, 3, 4, 5, 6]);
  });
  it("a node that shrinks keeps only the pods that still fit", () => {
    const state = createClusterState();
    state.upsertNode(node("n", 4));
    state.upsertPod({
      uid: "a",
      key: "a",
      node: "n",
      request: req(1, 0),
      devices: [{ index: 3, milli: 1000 }],
    });
    state.upsertPod({
      uid: "b",
      key: "b",
      node: "n",
      request: req(1, 0),
      devices: [{ index: 0, milli: 1000 }],
    });
    state.upsertNode(node("n", 2));
    expect(state.podCount).toBe(2); // a moved to a free device by first fit
    expect([...(state.nodes.get("n")?.free ?? [])]).toEqual([0, 0]);
    state.upsertNode(node("n", 1));
    expect(state.podCount).toBe(1);
  });
});
