/**
 * kinfer-scheduler over HTTP as kube-scheduler calls it (extender JSON, PascalCase and lowercase), and over
 * Connect (Explain): only nodes from the request come back, NodeNames is never null, nodes that can never
 * fit are unresolvable, malformed requests get HTTP 400 (oversized ones 413) and harm nothing.
 */
import { readFileSync } from "node:fs";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SchedulingService } from "../../../gen/es/kinfer/scheduling/v1/scheduling_pb.js";
import { createClusterState } from "../../../scheduler/cluster/cluster-state.js";
import type { DeviceShare } from "../../../scheduler/cluster/gpu-node.js";
import { type SchedulerServer, startSchedulerServer } from "../../../scheduler/scheduler-server.js";
import { postJson } from "../../helpers/sse.js";

const state = createClusterState();
const bound: { pod: string; node: string; devices: readonly DeviceShare[] }[] = [];
let server: SchedulerServer;

beforeAll(async () => {
  state.upsertNode({
    name: "gpu-node-1",
    model: "NVIDIA-H100-80GB-HBM3",
    cpuMilli: 96_000,
    memMiB: 1_000_000,
    gpus: 8,
    nvlinkDomainSize: 0,
    schedulable: true,
  });
  state.upsertNode({
    name: "gpu-node-2",
    model: "NVIDIA-A100-SXM4-80GB",
    cpuMilli: 96_000,
    memMiB: 1_000_000,
    gpus: 2,
    nvlinkDomainSize: 0,
    schedulable: true,
  });
  state.upsertNode({
    name: "gpu-node-3",
    model: "NVIDIA-A10",
    cpuMilli: 32_000,
    memMiB: 200_000,
    gpus: 4,
    nvlinkDomainSize: 0,
    schedulable: true,
  });
  // A binder that records what the extender decided; the Kubernetes binder is tested against a real
  // API server in test/k8s.
  server = await startSchedulerServer({
    host: "127.0.0.1",
    port: 0,
    state,
    defaultPolicy: "fragmentation",
    binder: {
      async bind(pod, node, devices) {
        bound.push({ pod: pod.name, node, devices });
      },
    },
  });
});
afterAll(() => server.close());

const fixture = (name: string) => readFileSync(new URL(`../fixtures/${name}`, import.meta.url), "utf8");
const post = (verb: string, body: unknown) => postJson(`${server.url}/scheduler/${verb}`, body);

describe("filter", () => {
  it("answers kube-scheduler's nodeCacheCapable request: fits, unresolvable, PascalCase, names from the request only", async () => {
    const res = await post("filter", fixture("filter-args-node-cache.json"));
    expect(res.status).toBe(200);
    const json = (await res.json()) as Record<string, unknown>;
    expect(Object.keys(json).sort()).toEqual([
      "Error",
      "FailedAndUnresolvableNodes",
      "FailedNodes",
      "NodeNames",
    ]);
    // The pod wants 2 GPUs of H100 or A100: node-3 (A10) can never fit.
    expect(json.NodeNames).toEqual(["gpu-node-1", "gpu-node-2"]);
    expect(json.FailedAndUnresolvableNodes).toEqual({
      "gpu-node-3": "GPU model not accepted",
    });
    expect(json.Error).toBe("");
  });

  it("accepts lowercase keys as kube-scheduler's JSON decoding would", async () => {
    const lower = fixture("filter-args-node-cache.json").replace(
      /"(Pod|Nodes|NodeNames)":/g,
      (_, k: string) => `"${k.toLowerCase()}":`,
    );
    const json = (await (await post("filter", lower)).json()) as { NodeNames: string[] };
    expect(json.NodeNames).toEqual(["gpu-node-1", "gpu-node-2"]);
  });

  it("never returns null NodeNames, and reports nodes it does not know", async () => {
    const json = (await (
      await post("filter", {
        Pod: {
          metadata: { name: "p", uid: "u-none" },
          spec: { containers: [{ name: "c", resources: { limits: { "nvidia.com/gpu": "16" } } }] },
        },
        Nodes: null,
        NodeNames: ["gpu-node-1", "ghost"],
      })
    ).json()) as Record<string, unknown>;
    expect(json.NodeNames).toEqual([]);
    expect(json.FailedNodes).toEqual({ ghost: expect.stringMatching(/cache/) });
    expect(json.FailedAndUnresolvableNodes).toEqual({ "gpu-node-1": "Too few GPUs on the node" });
  });

  it("works in full mode, returning the fitting nodes of the NodeList, judged on its own cache", async () => {
    const before = [...(state.nodes.get("gpu-node-1")?.free ?? [])];
    const json = (await (await post("filter", fixture("filter-args-full.json"))).json()) as {
      NodeNames: string[];
      Nodes: { items: { metadata: { name: string } }[] };
      FailedNodes: Record<string, string>;
    };
    expect(json.NodeNames).toEqual(["gpu-node-1"]);
    expect(json.Nodes.items.map((n) => n.metadata.name)).toEqual(["gpu-node-1"]);
    // The request's Node objects never enter the cache: a node it does not know is not judged on them.
    expect(json.FailedNodes).toEqual({ "cpu-node-1": "not in kinfer-scheduler's cache yet" });
    expect(state.nodes.has("cpu-node-1")).toBe(false);
    expect([...(state.nodes.get("gpu-node-1")?.free ?? [])]).toEqual(before);
    expect(state.nodes.get("gpu-node-1")?.cpuMilli).toBe(96_000);
  });

  it("reports an invalid pod request in Error", async () => {
    const json = (await (
      await post("filter", {
        Pod: { metadata: { uid: "bad", annotations: { "kinfer.io/gpu-milli": "1500" } } },
        NodeNames: ["gpu-node-1"],
      })
    ).json()) as { Error: string; NodeNames: string[] };
    expect(json.Error).toMatch(/gpu-milli/);
    expect(json.NodeNames).toEqual([]);
  });
});

describe("prioritize", () => {
  it("returns a bare HostPriorityList with scores 0..10 for exactly the requested nodes", async () => {
    const res = await post("prioritize", {
      Pod: {
        metadata: { name: "s", uid: "u-share", annotations: { "kinfer.io/gpu-milli": "250" } },
        spec: {},
      },
      NodeNames: ["gpu-node-1", "gpu-node-2", "gpu-node-3"],
    });
    const list = (await res.json()) as { Host: string; Score: number }[];
    expect(Array.isArray(list)).toBe(true);
    expect(list.map((p) => p.Host).sort()).toEqual(["gpu-node-1", "gpu-node-2", "gpu-node-3"]);
    for (const p of list) {
      expect(Number.isInteger(p.Score)).toBe(true);
      expect(p.Score).toBeGreaterThanOrEqual(0);
      expect(p.Score).toBeLessThanOrEqual(10);
    }
    expect(Math.max(...list.map((p) => p.Score))).toBe(10);
  });
});

describe("bind", () => {
  it("chooses devices, records the placement and calls the binder; accounting follows", async () => {
    const pod = {
      metadata: { name: "two", namespace: "ns", uid: "u-two" },
      spec: { containers: [{ name: "c", resources: { limits: { "nvidia.com/gpu": "2" } } }] },
    };
    await post("filter", { Pod: pod, NodeNames: ["gpu-node-2"] });
    const res = await post("bind", {
      PodName: "two",
      PodNamespace: "ns",
      PodUID: "u-two",
      Node: "gpu-node-2",
    });
    expect(await res.json()).toEqual({ Error: "" });
    expect(bound.at(-1)).toEqual({
      pod: "two",
      node: "gpu-node-2",
      devices: [
        { index: 0, milli: 1000 },
        { index: 1, milli: 1000 },
      ],
    });
    // The node is now full: the same request no longer fits it.
    const again = (await (
      await post("filter", {
        Pod: { ...pod, metadata: { ...pod.metadata, uid: "u-three" } },
        NodeNames: ["gpu-node-2"],
      })
    ).json()) as {
      NodeNames: string[];
    };
    expect(again.NodeNames).toEqual([]);
    const unknown = await (
      await post("bind", { PodName: "x", PodNamespace: "ns", PodUID: "never-filtered", Node: "gpu-node-1" })
    ).json();
    expect((unknown as { Error: string }).Error).toMatch(/not filtered/);
  });
});

describe("malformed requests", () => {
  it.each([
    ["filter", "{nope"],
    ["filter", "[]"],
    ["prioritize", '{"NodeNames":"x"}'],
    ["bind", '{"PodName":5}'],
    ["preempt", '{"NodeNameToMetaVictims":[]}'],
  ])("%s %s: HTTP 400 with a message", async (verb, body) => {
    const res = await post(verb, body);
    expect(res.status).toBe(400);
    expect(((await res.json()) as { Error: string }).Error.length).toBeGreaterThan(0);
  });

  it("a body over 16 MiB: HTTP 413, not buffered", async () => {
    const res = await post("filter", `{"Pod":"${"x".repeat(17 * 1024 * 1024)}"}`);
    expect(res.status).toBe(413);
    expect(((await res.json()) as { Error: string }).Error).toMatch(/exceeds 16777216 bytes/);
  });

  it("leave the process unharmed", async () => {
    const res = await post("filter", fixture("filter-args-node-cache.json"));
    expect(res.status).toBe(200);
    expect((await fetch(`${server.url}/healthz`)).status).toBe(200);
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    expect(metrics).toMatch(/kinfer_scheduler_decisions_total\{verb="filter",result="fit"\}/);
    expect(metrics).toMatch(/kinfer_scheduler_gpu_milli\{kind="capacity"\} 14000/);
  });
});

describe("SchedulingService over Connect", () => {
  it("explains every node: why it does not fit, how it scores", async () => {
    const client = createClient(
      SchedulingService,
      createConnectTransport({ baseUrl: server.url, httpVersion: "2" }),
    );
    const res = await client.explain({
      pod: {
        metadata: {
          name: "share",
          annotations: { "kinfer.io/gpu-milli": "500", "kinfer.io/gpu-models": "NVIDIA-A10" },
        },
      },
    });
    expect(res.policy).toBe("fragmentation");
    expect(res.request).toMatchObject({ gpus: 0, gpuMilli: 500, acceptedModels: ["NVIDIA-A10"] });
    expect(res.chosenNode).toBe("gpu-node-3");
    expect(res.nodes[0]).toMatchObject({
      node: "gpu-node-3",
      fits: true,
      score: 10,
      // What the cache holds (the prioritize test above left a hold for its pod on this node).
      freeGpuMilli: [...(state.nodes.get("gpu-node-3")?.free ?? [])],
    });
    expect(res.nodes.filter((n) => !n.fits).every((n) => n.unresolvable && n.reason !== "")).toBe(true);
  });
});
