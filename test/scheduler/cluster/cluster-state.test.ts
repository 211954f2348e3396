/**
 * The scheduler's cache of the cluster (scheduler/cluster/cluster-state.ts), event by event: a node
 * re-reported unchanged keeps its object (and the caches keyed by it), a cordon changes only its
 * generation, a capacity change rebuilds it with its pods; nodesVersion counts the node list's changes;
 * pods on a removed node come back with their devices when it returns, and pods seen before their node
 * are placed when it arrives; assumptions count until confirmed on their node, dropped, or expired at
 * exactly their time; a pod seen on another node than assumed moves there.
 */
import { describe, expect, it } from "vitest";
import {
  type ClusterState,
  createClusterState,
  type NodeInfo,
  type PlacedPod,
} from "../../../scheduler/cluster/cluster-state.js";
import type { DeviceShare, GpuNode } from "../../../scheduler/cluster/gpu-node.js";
import type { PodRequest } from "../../../scheduler/cluster/pod-request.js";

const info = (name: string, change: Partial<NodeInfo> = {}): NodeInfo => ({
  name,
  model: "H100",
  cpuMilli: 16_000,
  memMiB: 131_072,
  gpus: 4,
  nvlinkDomainSize: 0,
  schedulable: true,
  ...change,
});
const req = (gpus: number, gpuMilli = 0, cpuMilli = 1000, memMiB = 1024): PodRequest => ({
  gpus,
  gpuMilli,
  cpuMilli,
  memMiB,
  models: [],
  policy: "",
});
const placed = (uid: string, node: string, request: PodRequest, devices?: DeviceShare[]): PlacedPod => ({
  uid,
  key: `ns/${uid}`,
  node,
  request,
  devices,
});
const dev = (index: number, milli = 1000): DeviceShare => ({ index, milli });

function nodeOf(state: ClusterState, name: string): GpuNode {
  const n = state.nodes.get(name);
  if (n === undefined) throw new Error(`no node ${name}`);
  return n;
}
/** What a node has free: per GPU, CPU, memory. */
const freeOf = (state: ClusterState, name: string) => {
  const n = nodeOf(state, name);
  return { gpus: [...n.free], cpu: n.cpuFree, mem: n.memFree };
};

describe("nodes", () => {
  it("a node re-reported unchanged keeps its object, generation and the node list's version", () => {
    const state = createClusterState();
    expect(state.nodesVersion).toBe(0);
    state.upsertNode(info("a"));
    expect(state.nodesVersion).toBe(1);
    state.upsertNode(info("b"));
    expect(state.nodesVersion).toBe(2);
    state.upsertPod(placed("p", "a", req(1), [dev(2)]));
    const a = nodeOf(state, "a");
    const generation = a.generation;
    state.upsertNode(info("a"));
    expect(nodeOf(state, "a")).toBe(a);
    expect(a.generation).toBe(generation);
    expect(state.nodesVersion).toBe(2);
    expect(freeOf(state, "a")).toEqual({ gpus: [1000, 1000, 0, 1000], cpu: 15_000, mem: 130_048 });
  });

  it("a cordon or uncordon changes the node's schedulable flag and generation, not its object", () => {
    const state = createClusterState();
    state.upsertNode(info("a"));
    state.upsertPod(placed("p", "a", req(0, 250), [dev(1, 250)]));
    const a = nodeOf(state, "a");
    let generation = a.generation;
    for (const schedulable of [false, true]) {
      state.upsertNode(info("a", { schedulable }));
      expect(nodeOf(state, "a")).toBe(a);
      expect(a.schedulable).toBe(schedulable);
      expect(a.generation).not.toBe(generation);
      generation = a.generation;
      expect(state.nodesVersion).toBe(1);
      expect(freeOf(state, "a").gpus).toEqual([1000, 750, 1000, 1000]);
    }
  });

  const changes: [string, Partial<NodeInfo>][] = [
    ["model", { model: "A100" }],
    ["CPU", { cpuMilli: 32_000 }],
    ["memory", { memMiB: 262_144 }],
    ["GPU count", { gpus: 8 }],
    ["NVLink domain size", { nvlinkDomainSize: 2 }],
  ];
  for (const [what, change] of changes) {
    it(`a node whose ${what} changes is rebuilt with the change, keeping its pods' devices`, () => {
      const state = createClusterState();
      state.upsertNode(info("a", { schedulable: false }));
      state.upsertNode(info("b"));
      state.upsertPod(placed("p", "a", req(2, 0, 2000, 4096), [dev(1), dev(3)]));
      state.upsertPod(placed("q", "a", req(0, 300, 500, 512), [dev(0, 300)]));
      state.upsertPod(placed("other", "b", req(1), [dev(0)]));
      const old = nodeOf(state, "a");
      state.upsertNode(info("a", { schedulable: false, ...change }));
      const rebuilt = nodeOf(state, "a");
      expect(rebuilt).not.toBe(old);
      expect(state.nodesVersion).toBe(3);
      const expected = { ...info("a", { schedulable: false }), ...change };
      expect({
        name: rebuilt.name,
        model: rebuilt.model,
        cpuMilli: rebuilt.cpuMilli,
        memMiB: rebuilt.memMiB,
        gpus: rebuilt.free.length,
        nvlinkDomainSize: rebuilt.nvlinkDomainSize,
        schedulable: rebuilt.schedulable,
      }).toEqual(expected);
      // The pods on it hold what they held, and only they: b's pod is not re-applied here.
      const gpus = [700, 0, 1000, 0, ...Array(expected.gpus - 4).fill(1000)];
      expect(freeOf(state, "a")).toEqual({
        gpus,
        cpu: expected.cpuMilli - 2500,
        mem: expected.memMiB - 4608,
      });
      expect(state.devicesOf("p")).toEqual([dev(1), dev(3)]);
      expect(state.devicesOf("q")).toEqual([dev(0, 300)]);
      expect(freeOf(state, "b").gpus).toEqual([0, 1000, 1000, 1000]);
      expect(state.podCount).toBe(3);
    });
  }

  it("removing a node bumps the version once, and its pods return with their devices when it does", () => {
    const state = createClusterState();
    state.upsertNode(info("a"));
    state.upsertNode(info("b"));
    state.upsertPod(placed("p", "a", req(1), [dev(3)]));
    state.upsertPod(placed("q", "a", req(0, 400), [dev(1, 400)]));
    state.upsertPod(placed("r", "b", req(1), [dev(0)]));
    state.removeNode("a");
    expect(state.nodesVersion).toBe(3);
    expect(state.nodes.has("a")).toBe(false);
    expect(state.podOf("p")).toBeUndefined();
    expect(state.devicesOf("q")).toBeUndefined();
    expect([...state.pods()].map((p) => p.uid)).toEqual(["r"]);
    expect(state.podCount).toBe(1);
    // Removing it again, or a node never seen, changes nothing.
    state.removeNode("a");
    state.removeNode("zzz");
    expect(state.nodesVersion).toBe(3);
    expect(state.podOf("r")?.node).toBe("b");
    expect(freeOf(state, "b").gpus).toEqual([0, 1000, 1000, 1000]);

    // The node object is re-created: its pods are back where they were, without their annotation's help
    // (the holdings kept the devices).
    state.upsertNode(info("a"));
    expect(state.nodesVersion).toBe(4);
    expect(state.devicesOf("p")).toEqual([dev(3)]);
    expect(state.devicesOf("q")).toEqual([dev(1, 400)]);
    expect(state.podOf("q")).toEqual(placed("q", "a", req(0, 400), [dev(1, 400)]));
    expect(freeOf(state, "a")).toEqual({ gpus: [1000, 600, 1000, 0], cpu: 14_000, mem: 129_024 });
    expect(state.podCount).toBe(3);
    // Rebuilt again: still counted once.
    state.upsertNode(info("a", { cpuMilli: 20_000 }));
    expect(freeOf(state, "a")).toEqual({ gpus: [1000, 600, 1000, 0], cpu: 18_000, mem: 129_024 });
  });

  it("a pod deleted while its node is gone does not come back with the node", () => {
    const state = createClusterState();
    state.upsertNode(info("a"));
    state.upsertPod(placed("p", "a", req(1), [dev(0)]));
    state.removeNode("a");
    state.removePod("p");
    state.upsertNode(info("a"));
    expect(state.podOf("p")).toBeUndefined();
    expect(freeOf(state, "a").gpus).toEqual([1000, 1000, 1000, 1000]);
  });

  it("a node that shrinks under its pods drops those that no longer fit, and only its own", () => {
    const state = createClusterState();
    state.upsertNode(info("a"));
    state.upsertNode(info("b"));
    state.upsertPod(placed("big", "a", req(0, 0, 12_000), []));
    state.upsertPod(placed("small", "a", req(0, 0, 2000), []));
    state.upsertPod(placed("elsewhere", "b", req(0, 0, 12_000), []));
    state.upsertNode(info("a", { cpuMilli: 4000 }));
    expect(state.podOf("big")).toBeUndefined();
    expect(state.podOf("small")?.node).toBe("a");
    expect(state.podOf("elsewhere")?.node).toBe("b");
    expect(freeOf(state, "a").cpu).toBe(2000);
    expect(freeOf(state, "b").cpu).toBe(4000);
  });
});

describe("pods seen before their node", () => {
  it("are placed when their node arrives, with the devices of their annotation, once", () => {
    const state = createClusterState();
    expect(state.upsertPod(placed("p", "a", req(1), [dev(2)]))).toBeUndefined();
    expect(state.upsertPod(placed("s", "a", req(0, 600), [dev(2, 600)]))).toBeUndefined();
    expect(state.upsertPod(placed("q", "b", req(2), [dev(0), dev(1)]))).toBeUndefined();
    expect(state.podOf("p")).toBeUndefined();
    expect(state.podCount).toBe(0);
    state.upsertNode(info("a"));
    expect(state.podOf("p")).toEqual(placed("p", "a", req(1), [dev(2)]));
    expect(state.devicesOf("p")).toEqual([dev(2)]);
    // s's annotation claims a GPU p holds: first fit instead.
    expect(state.devicesOf("s")).toEqual([dev(0, 600)]);
    // q waits for b: nothing of it on a.
    expect(state.podOf("q")).toBeUndefined();
    expect(freeOf(state, "a")).toEqual({ gpus: [400, 1000, 0, 1000], cpu: 14_000, mem: 129_024 });
    expect(state.podCount).toBe(2);
    // Rebuilt: the pods are counted once, not again as if still waiting.
    state.upsertNode(info("a", { memMiB: 100_000 }));
    expect(freeOf(state, "a")).toEqual({ gpus: [400, 1000, 0, 1000], cpu: 14_000, mem: 97_952 });
    state.upsertNode(info("b"));
    expect(state.devicesOf("q")).toEqual([dev(0), dev(1)]);
    expect(freeOf(state, "b").gpus).toEqual([0, 0, 1000, 1000]);
    expect([...state.pods()].map((p) => p.uid)).toEqual(["p", "s", "q"]);
  });

  it("one that does not fit its node when it arrives holds nothing", () => {
    const state = createClusterState();
    state.upsertPod(placed("huge", "a", req(0, 0, 64_000)));
    state.upsertPod(placed("ok", "a", req(1)));
    state.upsertNode(info("a"));
    expect(state.podOf("huge")).toBeUndefined();
    expect(state.devicesOf("huge")).toBeUndefined();
    expect(state.devicesOf("ok")).toEqual([dev(0)]);
    expect(state.podCount).toBe(1);
    expect([...state.pods()].map((p) => p.uid)).toEqual(["ok"]);
  });

  it("one deleted before its node arrives is never placed", () => {
    const state = createClusterState();
    state.upsertPod(placed("p", "a", req(4)));
    state.removePod("p");
    state.upsertNode(info("a"));
    expect(state.podOf("p")).toBeUndefined();
    expect(freeOf(state, "a").gpus).toEqual([1000, 1000, 1000, 1000]);
  });
});

describe("pods", () => {
  it("podOf and devicesOf answer for held pods, undefined for others", () => {
    const state = createClusterState();
    state.upsertNode(info("a"));
    expect(state.podOf("nobody")).toBeUndefined();
    expect(state.devicesOf("nobody")).toBeUndefined();
    const p = placed("p", "a", req(0, 250));
    expect(state.upsertPod(p)).toEqual([dev(0, 250)]);
    expect(state.podOf("p")).toBe(p);
    expect(state.devicesOf("p")).toEqual([dev(0, 250)]);
  });

  it("a pod seen again on its node keeps its devices, whatever its annotation says", () => {
    const state = createClusterState();
    state.upsertNode(info("a"));
    state.upsertPod(placed("p", "a", req(1), [dev(2)]));
    expect(state.upsertPod(placed("p", "a", req(1)))).toEqual([dev(2)]);
    expect(state.upsertPod(placed("p", "a", req(1), [dev(3)]))).toEqual([dev(2)]);
    expect(freeOf(state, "a").gpus).toEqual([1000, 1000, 0, 1000]);
    expect(state.podCount).toBe(1);
  });

  it("a pod seen on another node is released from the first and placed on the second", () => {
    const state = createClusterState();
    state.upsertNode(info("a"));
    state.upsertNode(info("b"));
    state.assume(placed("p", "a", req(2)), [dev(2), dev(3)], 60_000);
    expect(state.upsertPod(placed("p", "b", req(2), [dev(1), dev(3)]))).toEqual([dev(1), dev(3)]);
    expect(freeOf(state, "a")).toEqual({ gpus: [1000, 1000, 1000, 1000], cpu: 16_000, mem: 131_072 });
    expect(freeOf(state, "b")).toEqual({ gpus: [1000, 0, 1000, 0], cpu: 15_000, mem: 130_048 });
    expect(state.podOf("p")?.node).toBe("b");
    expect(state.podCount).toBe(1);
    // Seen bound on b: no longer an assumption, so it does not expire.
    expect(state.unassume("p")).toBe(false);
  });

  it("a pod seen on a node not in the cache leaves the node it held", () => {
    const state = createClusterState();
    state.upsertNode(info("a"));
    state.upsertPod(placed("p", "a", req(1)));
    expect(state.upsertPod(placed("p", "gone", req(1)))).toBeUndefined();
    expect(freeOf(state, "a").gpus).toEqual([1000, 1000, 1000, 1000]);
    expect(state.podOf("p")).toBeUndefined();
  });
});

describe("assumptions", () => {
  it("refuse an unknown node or a placement that no longer fits, by name", () => {
    const state = createClusterState();
    state.upsertNode(info("a"));
    expect(() => state.assume(placed("p", "x", req(1)), [dev(0)], 1000)).toThrow(
      new RangeError("unknown node x"),
    );
    expect(() => state.assume(placed("p", "a", req(0, 0, 20_000)), [], 1000)).toThrow(
      new RangeError("ns/p no longer fits a"),
    );
    expect(state.podCount).toBe(0);
  });

  it("assuming a pod again replaces its placement instead of adding to it", () => {
    const state = createClusterState();
    state.upsertNode(info("a"));
    state.assume(placed("p", "a", req(1)), [dev(0)], 1000);
    state.assume(placed("p", "a", req(1)), [dev(3)], 1000);
    expect(freeOf(state, "a")).toEqual({ gpus: [1000, 1000, 1000, 0], cpu: 15_000, mem: 130_048 });
    expect(state.devicesOf("p")).toEqual([dev(3)]);
  });

  it("unassume drops only a placement still assumed", () => {
    const state = createClusterState();
    state.upsertNode(info("a"));
    state.assume(placed("p", "a", req(1)), [dev(0)], 1000);
    state.upsertPod(placed("bound", "a", req(1), [dev(1)]));
    expect(state.unassume("bound")).toBe(false);
    expect(state.devicesOf("bound")).toEqual([dev(1)]);
    expect(state.unassume("nobody")).toBe(false);
    expect(state.unassume("p")).toBe(true);
    expect(state.podOf("p")).toBeUndefined();
    expect(freeOf(state, "a").gpus).toEqual([1000, 0, 1000, 1000]);
    expect(state.unassume("p")).toBe(false);
  });

  it("confirm(uid, node) makes an assumption on that node final; on another node it does nothing", () => {
    let now = 0;
    const state = createClusterState(() => now);
    state.upsertNode(info("a"));
    state.upsertNode(info("b"));
    state.assume(placed("p", "a", req(1)), [dev(0)], 100);
    state.assume(placed("q", "a", req(1)), [dev(1)], 100);
    expect(state.confirm("p", "a")).toBe(true);
    expect(state.confirm("q", "b")).toBe(false);
    expect(state.confirm("nobody", "a")).toBe(false);
    now = 100;
    expect(state.expireAssumed()).toBe(1);
    expect(state.podOf("p")?.node).toBe("a");
    expect(state.podOf("q")).toBeUndefined();
    expect(state.unassume("p")).toBe(false);
    expect(freeOf(state, "a").gpus).toEqual([0, 1000, 1000, 1000]);
    // Confirming what is already final is still true.
    expect(state.confirm("p", "a")).toBe(true);
  });

  it("expire at exactly their time, each at its own, and bound pods never", () => {
    let now = 1000;
    const state = createClusterState(() => now);
    state.upsertNode(info("a"));
    state.assume(placed("p", "a", req(1)), [dev(0)], 500);
    now = 1200;
    state.assume(placed("q", "a", req(1)), [dev(1)], 500);
    state.upsertPod(placed("bound", "a", req(1), [dev(2)]));
    now = 1499;
    expect(state.expireAssumed()).toBe(0);
    now = 1500;
    expect(state.expireAssumed()).toBe(1);
    expect(state.podOf("p")).toBeUndefined();
    expect(state.podOf("q")?.uid).toBe("q");
    now = 1699;
    expect(state.expireAssumed()).toBe(0);
    now = 1700;
    expect(state.expireAssumed()).toBe(1);
    now = 1e12;
    expect(state.expireAssumed()).toBe(0);
    expect([...state.pods()].map((p) => p.uid)).toEqual(["bound"]);
    expect(freeOf(state, "a").gpus).toEqual([1000, 1000, 0, 1000]);
  });

  it("run on the wall clock by default", () => {
    const state = createClusterState();
    state.upsertNode(info("a"));
    state.assume(placed("now", "a", req(1)), [dev(0)], 0);
    state.assume(placed("later", "a", req(1)), [dev(1)], 3_600_000);
    expect(state.expireAssumed()).toBe(1);
    expect(state.podOf("now")).toBeUndefined();
    expect(state.podOf("later")?.uid).toBe("later");
  });
});
