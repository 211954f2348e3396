/**
 * The scheduler without Kubernetes: kinfer-scheduler --cluster FILE, run as the program, on the example
 * cluster of `npm start` (deploy/local/cluster.yaml). Its nodes and running pods are read as the
 * informers would read them (GPU models, NVLink domains, devices held); Filter, Bind, Preempt and Explain
 * over gRPC behave as in a cluster, and a bound pod's GPUs count for later pods. Bad files are refused
 * with a message naming the object.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SchedulingService } from "../../../gen/es/kinfer/scheduling/v1/scheduling_pb.js";
import { createClusterState } from "../../../scheduler/cluster/cluster-state.js";
import { LocalClusterError, loadLocalCluster } from "../../../scheduler/cluster/local-cluster-source.js";

const root = new URL("../../..", import.meta.url).pathname;
const CLUSTER = join(root, "deploy/local/cluster.yaml");
const NODES = ["h100-a", "h100-b", "a100-a", "a100-b", "l4-a"];

const gpus = (n: number) => ({
  containers: [{ name: "c", resources: { limits: { "nvidia.com/gpu": String(n) } } }],
});
const pod = (name: string, spec: object, annotations: Record<string, string> = {}) => ({
  metadata: { name, namespace: "demo", uid: name, annotations },
  spec,
});

describe("the cluster file", () => {
  it("reads nodes, GPU models, NVLink domains and the devices running pods hold", () => {
    const state = createClusterState();
    expect(loadLocalCluster(CLUSTER, state)).toEqual({ nodes: 5, pods: 4 });
    const h100a = state.nodes.get("h100-a");
    expect(h100a?.model).toBe("NVIDIA-H100-80GB-HBM3");
    expect(h100a?.nvlinkDomainSize).toBe(4);
    expect([...(h100a?.free ?? [])]).toEqual([0, 0, 0, 0, 1000, 1000, 1000, 1000]);
    expect([...(state.nodes.get("a100-b")?.free ?? [])]).toEqual([500, 750, 1000, 1000]);
    expect([...(state.nodes.get("l4-a")?.free ?? [])]).toEqual([700, 1000]);
  });

  it("reads an openb node list", () => {
    const state = createClusterState();
    const loaded = loadLocalCluster(join(root, "data/openb/openb_node_list_gpu_node.csv"), state);
    expect(loaded.nodes).toBe(1213);
    expect([...state.nodes.values()].reduce((s, n) => s + n.free.length, 0)).toBe(6212);
  });

  it("refuses a bad file, naming what is wrong", () => {
    const dir = mkdtempSync(join(tmpdir(), "kinfer-cluster-"));
    const cases: [string, RegExp][] = [
      [
        "kind: Node\nmetadata: {name: a}\nstatus: {allocatable: {cpu: 4}}\n---\nkind: Pod\nmetadata: {name: p}\nspec: {nodeName: b}\n",
        /Pod \/p is on unknown node b/,
      ],
      ["kind: Service\nmetadata: {name: s}\n", /only Nodes and Pods, not Service/],
      ["kind: Node\nmetadata: {}\n", /a Node has no metadata.name/],
      ["{ not: yaml", /not valid YAML/],
      ["kind: Pod\nmetadata: {name: p}\n", /holds nothing|no Node/],
      [
        "kind: Node\nmetadata: {name: a}\nstatus: {allocatable: {cpu: 4, memory: 1Gi, nvidia.com/gpu: 1}}\n---\nkind: Pod\nmetadata: {name: p, annotations: {kinfer.io/gpu-milli: '600'}}\nspec: {nodeName: a}\n---\nkind: Pod\nmetadata: {name: q, annotations: {kinfer.io/gpu-milli: '600'}}\nspec: {nodeName: a}\n",
        /Pod \/q does not fit on node a/,
      ],
    ];
    for (const [i, [text, message]] of cases.entries()) {
      const file = join(dir, `c${i}.yaml`);
      writeFileSync(file, text);
      expect(() => loadLocalCluster(file, createClusterState())).toThrow(LocalClusterError);
      expect(() => loadLocalCluster(file, createClusterState())).toThrow(message);
    }
  });
});

describe("kinfer-scheduler --cluster", () => {
  /** Where the test's 4-GPU pods went, by pod. */
  const placedOn = new Map<string, string>();
  let child: ChildProcess;
  let url: string;
  beforeAll(async () => {
    child = spawn(
      `${root}bin/kinfer-scheduler`,
      ["--cluster", CLUSTER, "--port", "0", "--log-level", "warn"],
      {
        cwd: root,
        stdio: ["ignore", "pipe", "inherit"],
      },
    );
    url = await new Promise<string>((resolve, reject) => {
      child.once("exit", (code) => reject(new Error(`kinfer-scheduler exited with ${code}`)));
      createInterface({ input: child.stdout as NodeJS.ReadableStream }).on("line", (line) => {
        const m = /^kinfer-scheduler: ready at (\S+)$/.exec(line);
        if (m) resolve(m[1] as string);
      });
    });
  }, 30_000);
  afterAll(() => {
    child.kill("SIGTERM");
  });
  const client = () => createClient(SchedulingService, createGrpcTransport({ baseUrl: url }));

  it("filters to the policy's pick, binds it, and counts the bound pod's GPUs from then on", async () => {
    const c = client();
    const placed: string[] = [];
    for (const name of ["tp-1", "tp-2", "tp-3"]) {
      const filtered = await c.filter({ pod: pod(name, gpus(4)), nodeNames: NODES });
      const node = filtered.nodeNames[0] as string;
      expect(filtered.nodeNames).toHaveLength(1);
      expect((await c.bind({ podName: name, podNamespace: "demo", podUid: name, node })).error).toBe("");
      placed.push(node);
      placedOn.set(name, node);
    }
    // Both places with exactly four free GPUs in one NVLink domain fill first, then the empty node.
    expect(new Set(placed.slice(0, 2))).toEqual(new Set(["a100-a", "h100-a"]));
    expect(placed[2]).toBe("h100-b");
    const explained = await c.explain({ pod: pod("next", gpus(4)) });
    const verdict = new Map(explained.nodes.map((n) => [n.node, n]));
    expect(verdict.get("a100-a")?.fits).toBe(false);
    expect(verdict.get("a100-a")?.reason).toMatch(/^Insufficient whole GPUs/);
    expect(verdict.get("h100-b")?.fits).toBe(true);
    expect(verdict.get("h100-b")?.freeGpuMilli.filter((f) => f === 1000)).toHaveLength(4);
    // The last free domain is taken; nothing is left for a fifth 4-GPU pod.
    const last = await c.filter({ pod: pod("tp-4", gpus(4)), nodeNames: NODES });
    expect(last.nodeNames).toEqual(["h100-b"]);
    expect(
      (await c.bind({ podName: "tp-4", podNamespace: "demo", podUid: "tp-4", node: "h100-b" })).error,
    ).toBe("");
    const none = await c.filter({ pod: pod("tp-5", gpus(4)), nodeNames: NODES });
    expect(none.nodeNames).toEqual([]);
    expect(Object.keys(none.failedNodes).sort()).toEqual(["a100-a", "a100-b", "h100-a", "h100-b"]);
  });

  it("a bind for a pod it never filtered is refused, and the cluster is unchanged", async () => {
    const c = client();
    const before = (await c.explain({ pod: pod("x", gpus(1)) })).nodes.map((n) => n.freeGpuMilli.join());
    const r = await c.bind({ podName: "ghost", podNamespace: "demo", podUid: "ghost", node: "l4-a" });
    expect(r.error).toMatch(/was not filtered/);
    const after = (await c.explain({ pod: pod("x", gpus(1)) })).nodes.map((n) => n.freeGpuMilli.join());
    expect(after).toEqual(before);
  });

  it("preempt keeps only nodes where evicting the victims makes room", async () => {
    const c = client();
    const onA100 = [...placedOn].find(([, node]) => node === "a100-a")?.[0] as string;
    // Evicting the 4-GPU pod on a100-a frees the whole node; evicting the embedder (half of one GPU)
    // leaves a100-b with two whole GPUs, too few.
    const reply = await c.preempt({
      pod: pod("big", gpus(4)),
      nodeNameToMetaVictims: {
        "a100-a": { pods: [{ uid: onA100 }] },
        "a100-b": { pods: [{ uid: "local-1-kinfer-models/embedder-0" }] },
      },
    });
    expect(Object.keys(reply.nodeNameToMetaVictims)).toEqual(["a100-a"]);
  });
});
