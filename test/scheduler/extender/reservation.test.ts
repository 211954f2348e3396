/**
 * kube-scheduler binds asynchronously: it filters and prioritizes the next pod before the previous pod's
 * bind reaches the extender. Prioritize therefore holds the pod's devices on its one top node, so the next
 * decision sees them; bind moves the hold to the node kube-scheduler really picked; a new attempt, or the
 * hold's expiry, frees it.
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

function setup() {
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
