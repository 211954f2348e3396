/**
 * kube-scheduler binds asynchronously: it filters and prioritizes the next pod before the previous pod's
 * bind reaches the extender. Prioritize therefore holds the pod's devices on its one top node, so the next
 * decision sees them; bind moves the hold to the node kube-scheduler really picked; a new attempt, or the
 * hold's expiry, frees it. With `filterReturns: "best"`, the filter itself picks, returns that one node
 * and holds it; when nothing fits it still gives every node's reason.
 */
import { create } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import {
  BindRequestSchema,
  FilterRequestSchema,
  PodSchema,
  PrioritizeRequestSchema,
} from "../../../gen/es/kinfer/scheduling/v1/scheduling_pb.js";
import { createClusterState } from "../../../scheduler/cluster/cluster-state.js";
import type { DeviceShare } from "../../../scheduler/cluster/gpu-node.js";
import { createSchedulingService } from "../../../scheduler/extender/scheduling-service.js";

const NODES = ["node-a", "node-b", "node-c"];

function setup(filterReturns: "all" | "best" = "all") {
  let now = 0;
  const state = createClusterState(() => now);
  for (const name of NODES) {
    state.upsertNode({
      name,
      model: "H100",
      cpuMilli: 64_000,
      memMiB: 512_000,
      gpus: 2,
      nvlinkDomainSize: 0,
      schedulable: true,
    });
  }
  const bound: { pod: string; node: string; devices: readonly DeviceShare[] }[] = [];
  const service = createSchedulingService({
    state,
    defaultPolicy: "binpack",
    reserveTtlMs: 30_000,
    random: () => 0,
    filterReturns,
    binder: {
      async bind(pod, node, devices) {
        bound.push({ pod: pod.name, node, devices });
      },
    },
  });
  const pod = (name: string, milli: number) =>
    create(PodSchema, {
      metadata: {
        name,
        namespace: "jobs",
        uid: `uid-${name}`,
        annotations: { "kinfer.io/gpu-milli": `${milli}` },
      },
      spec: { containers: [{ resources: { requests: { cpu: "1", memory: "1Gi" } } }] },
    });
  return {
    state,
    bound,
    advance: (ms: number) => (now += ms),
    filter: (name: string, milli: number) =>
      service.filter(create(FilterRequestSchema, { pod: pod(name, milli), nodeNames: NODES })),
    /** The nodes prioritize scored 10. */
    prioritize: (name: string, milli: number) =>
      (
        service.prioritize(create(PrioritizeRequestSchema, { pod: pod(name, milli), nodeNames: NODES }))
          .hostPriorities ?? []
      )
        .filter((h) => h.score === 10)
        .map((h) => h.host as string),
    bind: (name: string, node: string) =>
      service.bind(
        create(BindRequestSchema, { podName: name, podNamespace: "jobs", podUid: `uid-${name}`, node }),
      ),
  };
}

describe("prioritize holds the top node until bind", () => {
  it("gives 10 to one node only and holds the pod's devices there", () => {
    const { state, prioritize } = setup();
    const top = prioritize("p1", 500);
    expect(top).toHaveLength(1);
    expect(state.devicesOf("uid-p1")).toEqual([{ index: expect.any(Number), milli: 500 }]);
    expect([...(state.nodes.get(top[0] as string)?.free ?? [])].sort()).toEqual([1000, 500]);
  });

  it("the next pod, scored before the first pod's bind arrives, packs onto the held GPU", async () => {
    const { state, prioritize, bind, bound } = setup();
    const [first] = prioritize("p1", 500) as [string];
    // kube-scheduler has not bound p1 yet; p2 comes next.
    const [second] = prioritize("p2", 500) as [string];
    expect(second).toBe(first);
    expect((await bind("p1", first)).error).toBe("");
    expect((await bind("p2", second)).error).toBe("");
    expect(bound[1]?.devices).toEqual(bound[0]?.devices);
    // Both shares on one GPU: it is full, the node's other GPU is whole.
    expect([...(state.nodes.get(first)?.free ?? [])].sort()).toEqual([0, 1000]);
  });

  it("bind on another node than the held one moves the hold; accounting stays exact", async () => {
    const { state, prioritize, bind } = setup();
    const [held] = prioritize("p1", 700) as [string];
    const other = NODES.find((n) => n !== held) as string;
    expect((await bind("p1", other)).error).toBe("");
    expect([...(state.nodes.get(held)?.free ?? [])]).toEqual([1000, 1000]);
    expect([...(state.nodes.get(other)?.free ?? [])].sort()).toEqual([1000, 300]);
    expect(state.podCount).toBe(1);
  });

  it("a new attempt drops the old hold, and an unused hold expires", () => {
    const { state, filter, prioritize, advance } = setup();
    prioritize("p1", 700);
    expect(state.podCount).toBe(1);
    // The pod failed later in kube-scheduler's cycle and is retried: filter frees the old hold first, so
    // the pod is not counted against itself.
    expect(filter("p1", 700).nodeNames).toEqual(NODES);
    expect(state.podCount).toBe(0);
    prioritize("p1", 700);
    advance(30_001);
    expect(state.expireAssumed()).toBe(1);
    expect(state.podCount).toBe(0);
  });
});

describe("filter returns the chosen node (filterReturns: best)", () => {
  it("returns only the policy's pick, holds it, and the next pod sees the hold", async () => {
    const { state, filter, bind } = setup("best");
    const first = filter("p1", 600);
    expect(first.nodeNames).toHaveLength(1);
    expect(first.failedNodes ?? {}).toEqual({});
    const node = first.nodeNames?.[0] as string;
    expect(state.devicesOf("uid-p1")).toEqual([{ index: expect.any(Number), milli: 600 }]);
    // binpack: the next share goes to the same GPU's node, on the held state.
    expect(filter("p2", 400).nodeNames).toEqual([node]);
    expect((await bind("p1", node)).error).toBe("");
    expect((await bind("p2", node)).error).toBe("");
    expect([...(state.nodes.get(node)?.free ?? [])].sort()).toEqual([0, 1000]);
  });

  it("when nothing fits, every node is listed with its reason", () => {
    const { filter } = setup("best");
    // Six whole-GPU pods, each held where the filter put it: every GPU is taken.
    for (const name of NODES)
      for (let i = 0; i < 2; i++) expect(filter(`fill-${name}-${i}`, 1000).nodeNames).toHaveLength(1);
    const full = filter("late", 500);
    expect(full.nodeNames).toEqual([]);
    expect(Object.keys(full.failedNodes ?? {}).sort()).toEqual(NODES);
    expect(Object.values(full.failedNodes ?? {})[0]).toBe("Insufficient GPU share");
  });
});
