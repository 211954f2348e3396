/**
 * The scheduler extender end to end: a real kube-scheduler (profile gpu-scheduler, extender at
 * kinfer-scheduler on loopback, nodeCacheCapable, percentageOfNodesToScore 100, bindVerb; the filter
 * returns the one node it picks, kinfer-scheduler's default, so kube-scheduler skips scoring) against a real
 * apiserver, 60 Node objects with GPUs, and pods asking for whole GPUs and GPU shares. kinfer-scheduler
 * runs with its real informers and binder. Every pod binds to a node the extender allows, no GPU is
 * over-committed, multi-GPU pods get whole GPUs on one node, and while the extender is down pods wait
 * (ignorable: false) and then bind when it is back.
 */

import { type ChildProcess, spawn } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { CoreV1Api, KubeConfig, type V1Pod } from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { type ClusterState, createClusterState } from "../../scheduler/cluster/cluster-state.js";
import { startKubeSource } from "../../scheduler/cluster/kube-cluster-source.js";
import { DEVICES_ANNOTATION, formatDevices, parseDevices } from "../../scheduler/cluster/pod-request.js";
import { createKubeBinder } from "../../scheduler/extender/kube-binder.js";
import { type SchedulerServer, startSchedulerServer } from "../../scheduler/scheduler-server.js";
import { freePort } from "../helpers/free-port.js";

const k8s = inject("k8s");
const NS = "gpu-jobs";
const NODES = 60;
let kc: KubeConfig;
let core: CoreV1Api;
let extenderPort: number;
let extender: SchedulerServer | undefined;
let cache: ClusterState;
let source: ReturnType<typeof startKubeSource>;
let kubeScheduler: ChildProcess;
let schedulerLog = "";
/** Every bind the extender made, for failure messages. */
const binds: string[] = [];

async function startExtender() {
  const state = createClusterState();
  cache = state;
  const kube = createKubeBinder(kc);
  source = startKubeSource(kc, state);
  await source.synced;
  extender = await startSchedulerServer({
    host: "127.0.0.1",
    port: extenderPort,
    state,
    defaultPolicy: "fragmentation",
    // As kinfer-scheduler runs by default: the filter returns the node it picks.
    filterReturns: "best",
    binder: {
      bind(pod, node, devices) {
        const n = state.nodes.get(node);
        binds.push(`${pod.name} -> ${node} ${formatDevices(devices)} (free after: ${n?.free})`);
        return kube.bind(pod, node, devices);
      },
    },
  });
}

async function stopExtender() {
  await extender?.close();
  await source?.close();
  extender = undefined;
}

beforeAll(async () => {
  kc = new KubeConfig();
  kc.loadFromFile(k8s.kubeconfig);
  core = kc.makeApiClient(CoreV1Api);
  await core.createNamespace({ body: { metadata: { name: NS } } });
  // Nodes: 8-GPU H100 nodes in two NVLink domains of 4, and 2-GPU A10 nodes.
  for (let i = 0; i < NODES; i++) {
    const big = i % 3 !== 0;
    const name = `gpu-node-${String(i).padStart(2, "0")}`;
    const metadata = {
      name,
      labels: {
        "nvidia.com/gpu.product": big ? "NVIDIA-H100-80GB-HBM3" : "NVIDIA-A10",
        ...(big ? { "kinfer.io/nvlink-domain-size": "4" } : {}),
      },
    };
    await core.createNode({ body: { metadata } });
    const resources = { cpu: "64", memory: "512Gi", pods: "110", "nvidia.com/gpu": big ? "8" : "2" };
    // A status update replaces the object's metadata too: send the labels again, or they are gone.
    await core.replaceNodeStatus({
      name,
      body: {
        metadata,
        status: {
          capacity: resources,
          allocatable: resources,
          conditions: [
            {
              type: "Ready",
              status: "True",
              reason: "KubeletReady",
              lastHeartbeatTime: new Date(),
              lastTransitionTime: new Date(),
            },
          ],
        },
      },
    });
    // The apiserver taints new nodes not-ready; the node lifecycle controller (not running here) would
    // lift it once the node reports Ready.
    const created = await core.readNode({ name });
    await core.replaceNode({ name, body: { ...created, spec: { ...created.spec, taints: [] } } });
  }
  extenderPort = await freePort();
  await startExtender();
  const config = join(k8s.kubeconfig, "..", "kube-scheduler.yaml");
  writeFileSync(
    config,
    [
      "apiVersion: kubescheduler.config.k8s.io/v1",
      "kind: KubeSchedulerConfiguration",
      `clientConnection: {kubeconfig: ${k8s.kubeconfig}}`,
      "leaderElection: {leaderElect: false}",
      "percentageOfNodesToScore: 100",
      "profiles:",
      "- schedulerName: gpu-scheduler",
      // The extender decides: in-tree scorers (LeastAllocated spreads) would outvote it.
      "  plugins: {score: {disabled: [{name: '*'}]}}",
      "extenders:",
      `- urlPrefix: http://127.0.0.1:${extenderPort}/scheduler`,
      "  filterVerb: filter",
      "  prioritizeVerb: prioritize",
      "  bindVerb: bind",
      "  weight: 10",
      "  httpTimeout: 5s",
      "  nodeCacheCapable: true",
      "  ignorable: false",
      "",
    ].join("\n"),
  );
  kubeScheduler = spawn(join(k8s.bin, "kube-scheduler"), [
    `--config=${config}`,
    `--secure-port=${await freePort()}`,
    "--bind-address=127.0.0.1",
    `--authentication-kubeconfig=${k8s.kubeconfig}`,
    `--authorization-kubeconfig=${k8s.kubeconfig}`,
    "--v=2",
  ]);
  kubeScheduler.stderr?.on("data", (d: Buffer) => {
    schedulerLog = (schedulerLog + d.toString()).slice(-30_000);
  });
});

afterAll(async () => {
  kubeScheduler?.kill("SIGKILL");
  await stopExtender();
});

type PodSpec = { gpus?: number; milli?: number; policy?: string };

function pod(name: string, opts: PodSpec): V1Pod {
  const limits: Record<string, string> = opts.gpus ? { "nvidia.com/gpu": String(opts.gpus) } : {};
  const annotations: Record<string, string> = {};
  if (opts.milli) annotations["kinfer.io/gpu-milli"] = String(opts.milli);
  if (opts.policy) annotations["kinfer.io/placement-policy"] = opts.policy;
  return {
    metadata: { name, namespace: NS, annotations },
    spec: {
      schedulerName: "gpu-scheduler",
      containers: [
        {
          name: "c",
          image: "registry.invalid/none",
          resources: { requests: { cpu: "1", memory: "1Gi" }, limits },
        },
      ],
    },
  };
}

/** Waits until kube-scheduler has tried to place the pod and failed (its PodScheduled condition False). */
async function schedulingFailed(name: string, timeoutMs = 60_000): Promise<V1Pod> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const p = await core.readNamespacedPod({ name, namespace: NS });
    if (p.status?.conditions?.some((c) => c.type === "PodScheduled" && c.status === "False")) return p;
    if (Date.now() > until) throw new Error(`${name}: no failed scheduling attempt in ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function waitBound(names: string[], timeoutMs: number): Promise<V1Pod[]> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const pods = (await core.listNamespacedPod({ namespace: NS })).items.filter((p) =>
      names.includes(p.metadata?.name ?? ""),
    );
    if (pods.length === names.length && pods.every((p) => p.spec?.nodeName)) return pods;
    if (Date.now() > until) {
      throw new Error(
        `not all bound: ${pods.filter((p) => !p.spec?.nodeName).map((p) => p.metadata?.name)}\n${schedulerLog.slice(-3000)}`,
      );
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

describe("kube-scheduler with the kinfer extender", () => {
  it("kinfer-scheduler's cache reads GPU model, count and NVLink domains from the Node objects", () => {
    expect(cache.nodes.size).toBe(NODES);
    expect(cache.nodes.get("gpu-node-01")).toMatchObject({
      model: "NVIDIA-H100-80GB-HBM3",
      nvlinkDomainSize: 4,
    });
    expect(cache.nodes.get("gpu-node-01")?.free).toHaveLength(8);
    expect(cache.nodes.get("gpu-node-03")).toMatchObject({ model: "NVIDIA-A10", nvlinkDomainSize: 0 });
    expect(cache.nodes.get("gpu-node-03")?.free).toHaveLength(2);
  });

  it("binds whole-GPU and GPU-share pods without over-committing any GPU", async () => {
    const specs: [string, PodSpec][] = [];
    // The shares name their policy (binpack); the whole-GPU pods get the default (fragmentation).
    for (let i = 0; i < 30; i++)
      specs.push([`share-${i}`, { milli: [250, 500, 300, 470][i % 4] as number, policy: "binpack" }]);
    for (let i = 0; i < 20; i++) specs.push([`one-${i}`, { gpus: 1 }]);
    for (let i = 0; i < 10; i++) specs.push([`four-${i}`, { gpus: 4 }]);
    for (const [name, opts] of specs)
      await core.createNamespacedPod({ namespace: NS, body: pod(name, opts) });
    const pods = await waitBound(
      specs.map(([n]) => n),
      90_000,
    );
    const used = new Map<string, number[]>();
    for (const p of pods) {
      const text = p.metadata?.annotations?.[DEVICES_ANNOTATION];
      expect(text, `${p.metadata?.name} has its devices recorded`).toBeDefined();
      const devices = parseDevices(text as string);
      const spec = specs.find(([n]) => n === p.metadata?.name)?.[1] ?? {};
      if (spec.gpus) {
        expect(devices).toHaveLength(spec.gpus);
        expect(devices.every((d) => d.milli === 1000)).toBe(true);
        if (spec.gpus === 4) {
          // One NVLink domain of 4 on an H100 node: indices 0-3 or 4-7.
          const domains = new Set(devices.map((d) => Math.floor(d.index / 4)));
          expect(domains.size, `${p.metadata?.name} on ${p.spec?.nodeName}: ${text}`).toBe(1);
          // Only H100 nodes have 4 GPUs; every third node is a 2-GPU A10.
          expect(Number(p.spec?.nodeName?.slice(-2)) % 3, `${p.metadata?.name}`).not.toBe(0);
        }
      } else {
        expect(devices).toEqual([{ index: expect.any(Number), milli: spec.milli }]);
      }
      const node = p.spec?.nodeName as string;
      const perDevice = used.get(node) ?? new Array(8).fill(0);
      for (const d of devices) perDevice[d.index] += d.milli;
      used.set(node, perDevice);
    }
    for (const [node, perDevice] of used) {
      for (const milli of perDevice) expect(milli, node).toBeLessThanOrEqual(1000);
    }
    // binpack packs the shares: 30 of them (11,400 thousandths) need at least 12 GPUs, and take 13 here
    // in every run; spreading them would use 30.
    const shareGpus = new Set(
      pods
        .filter((p) => p.metadata?.name?.startsWith("share-"))
        .map(
          (p) =>
            `${p.spec?.nodeName}/${parseDevices(p.metadata?.annotations?.[DEVICES_ANNOTATION] as string)[0]?.index}`,
        ),
    );
    expect(shareGpus.size, binds.join("\n")).toBeLessThanOrEqual(13);
  });

  it("never places a pod where no node can hold it, and the extender's metrics say so", async () => {
    // In-tree filters pass (8-GPU nodes exist); only the extender knows no node has this GPU model.
    const wrongModel = pod("wrong-model", { gpus: 2 });
    wrongModel.metadata = { ...wrongModel.metadata, annotations: { "kinfer.io/gpu-models": "NVIDIA-B200" } };
    await core.createNamespacedPod({ namespace: NS, body: wrongModel });
    // Waited for the scheduler's own verdict (PodScheduled False), not for a while.
    const p = await schedulingFailed("wrong-model");
    expect(p.spec?.nodeName).toBeUndefined();
    expect(p.status?.conditions?.find((c) => c.type === "PodScheduled")?.reason).toBe("Unschedulable");
    const metrics = await (await fetch(`${extender?.url}/metrics`)).text();
    expect(metrics).toMatch(/kinfer_scheduler_decisions_total\{verb="filter",result="no-fit"\}/);
    expect(metrics).toMatch(/kinfer_scheduler_decisions_total\{verb="bind",result="bound"\} [1-9]/);
    // The filter returned one node each time, so the real kube-scheduler never called prioritize.
    expect(metrics).not.toMatch(/kinfer_scheduler_decisions_total\{verb="prioritize"/);
  });

  it("with the extender down, pods wait (ignorable: false), then bind when it is back", async () => {
    await stopExtender();
    await core.createNamespacedPod({ namespace: NS, body: pod("waits", { gpus: 1 }) });
    // The scheduler tried and failed on the extender's error (it is not ignorable): the pod is unbound.
    const waiting = await schedulingFailed("waits");
    expect(waiting.spec?.nodeName).toBeUndefined();
    await startExtender();
    const [bound] = await waitBound(["waits"], 90_000);
    expect(bound?.metadata?.annotations?.[DEVICES_ANNOTATION]).toMatch(/^\d:1000$/);
  });
});
