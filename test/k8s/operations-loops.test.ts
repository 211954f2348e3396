/**
 * The operations loops act for real (issue #22), on the cluster harness of test/k8s/cluster (etcd,
 * kube-apiserver, kube-controller-manager, kube-scheduler, kwok GPU and CPU nodes, the kubelet stand-in
 * running pods as processes), with deploy/ installed and every add-on built from its pinned Go module
 * (test/k8s/build.sh):
 * 1. monitoring as deployed: prometheus-operator renders deploy/monitoring's monitors and rules into the
 *    configuration Debian's Prometheus runs, with Kubernetes service discovery under a ServiceAccount's
 *    token; every kinfer target is up and the dashboard's queries return data;
 * 2. autoscaling: prometheus-adapter serves vLLM's queue as the custom metrics API; load through the
 *    gateway makes llama-3-8b's HPA scale it out, the new pods are placed by kinfer-scheduler and take
 *    traffic, and it scales back in when the load stops, with no stream failed;
 * 3. canaries: Flagger judges new versions of llama-3-8b on the gateway's per-version metrics from that
 *    Prometheus: a healthy one is promoted, a failing one and a slow one are rolled back;
 * 4. scale from zero: KEDA scales qwen2.5-32b from zero on the gateway's held requests, which are served;
 * 5. alerts: a killed replica, a stalled one and a flooded model make the matching alerts go pending and
 *    fire; a model loading or cold-starting makes none pending.
 * Shortened clocks (HPA windows, canary intervals, alerts' `for:`) come from the overlays in
 * test/k8s/operations/models and test/k8s/operations/monitoring, which say what they change.
 */

import { execFileSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { CoreV1Api, type V1Pod } from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { freePort } from "../helpers/free-port.js";
import { type Cluster, startCluster } from "./cluster/cluster.js";
import { requireBuild } from "./cluster/images.js";
import { type HostProcess, startHostProcess } from "./operations/host-process.js";
import { type Monitoring, startMonitoring } from "./operations/prometheus.js";

const root = new URL("../..", import.meta.url).pathname;
const here = new URL(".", import.meta.url).pathname;
const GPU_NODES = [
  { name: "gpu-a", product: "NVIDIA-H100-80GB-HBM3", gpus: 8 },
  { name: "gpu-b", product: "NVIDIA-H100-80GB-HBM3", gpus: 8 },
];
const CPU_NODES = ["cpu-a", "cpu-b"];
const SYSTEM = "kinfer-system";
const MODELS = "kinfer-models";
const QWEN = { model: "qwen2.5-32b", deployment: "qwen2-5-32b-vllm", app: "qwen2-5-32b" };
const LLAMA = { model: "llama-3-8b", deployment: "llama-3-8b-vllm", app: "llama-3-8b" };
/** What cluster DNS would answer for the Service deploy/ names Prometheus by. */
const PROMETHEUS_SERVICE = "prometheus-operated.monitoring.svc";

let cluster: Cluster;
let monitoring: Monitoring;
const addons: HostProcess[] = [];

const core = () => cluster.kc.makeApiClient(CoreV1Api);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** What the kubelet stand-in knows, for failure messages. */
function podReport(): string {
  const k = cluster.kubelet;
  return [
    `pods: ${[...k.pods.values()].map((p) => `${p.namespace}/${p.name}@${p.ip}${p.readyAt ? "" : " (not ready)"}`).join(", ")}`,
    ...k.failures.map((f) => `failure: ${f}`),
    ...k.crashes.map((c) => `crash: ${c.slice(0, 500)}`),
  ].join("\n");
}

async function until<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs = 60_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    const v = await fn().catch((err: unknown) => {
      lastError = err;
      return undefined;
    });
    if (v !== undefined) return v;
    if (Date.now() > end)
      throw new Error(
        `timed out after ${timeoutMs} ms waiting for ${what}${lastError ? ` (last error: ${String(lastError)})` : ""}\n${podReport()}`,
      );
    await sleep(250);
  }
}

async function podsOf(namespace: string, selector: string): Promise<V1Pod[]> {
  return (await core().listNamespacedPod({ namespace, labelSelector: selector })).items;
}
const isReady = (p: V1Pod) =>
  p.metadata?.deletionTimestamp === undefined &&
  (p.status?.conditions ?? []).some((c) => c.type === "Ready" && c.status === "True");

beforeAll(async () => {
  requireBuild();
  const started = Date.now();
  cluster = await startCluster({ gpuNodes: GPU_NODES, cpuNodes: CPU_NODES });
  const crds = join(cluster.cp.bin, "crds");
  for (const f of readdirSync(crds)) await cluster.kubectl(["apply", "--server-side", "-f", join(crds, f)]);
  await cluster.kubectl(["wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"]);
  const hosts = { [PROMETHEUS_SERVICE]: cluster.network.hostAddress };
  // Flagger, as in the deployed test, but with a Prometheus to judge canaries by.
  addons.push(
    startHostProcess({
      dir: cluster.cp.dir,
      name: "flagger",
      argv: [
        join(cluster.cp.bin, "flagger"),
        `-kubeconfig=${cluster.cp.kubeconfig}`,
        "-mesh-provider=kubernetes",
        `-metrics-server=http://${PROMETHEUS_SERVICE}:9090`,
        `-namespace=${MODELS}`,
        `-port=${await freePort()}`,
        "-control-loop-interval=2s",
        "-enable-leader-election=false",
      ],
      hosts,
    }),
  );
  // deploy/ as the README installs it (test/k8s/deployed.test.ts runs the README's commands themselves),
  // with the overlays of test/k8s/operations for what the tests cannot wait out.
  await cluster.kubectl(["apply", "-k", join(root, "deploy/base")]);
  await cluster.kubectl([
    "-n",
    SYSTEM,
    "create",
    "secret",
    "generic",
    "kinfer-gateway-admin",
    `--from-literal=token=${Math.random().toString(36).slice(2)}`,
  ]);
  await cluster.kubectl(["create", "namespace", "monitoring"]);
  await cluster.kubectl(["apply", "-k", join(here, "operations/monitoring")]);
  await cluster.kubectl(["create", "namespace", MODELS]);
  await cluster.kubectl(["apply", "-k", join(here, "operations/models")]);
  await cluster.kubectl([
    "-n",
    SYSTEM,
    "rollout",
    "status",
    "deployment",
    "-l",
    "app.kubernetes.io/part-of=kinfer",
    "--timeout=300s",
  ]);
  await cluster
    .kubectl([
      "-n",
      MODELS,
      "wait",
      `canary/${LLAMA.deployment}`,
      "--for=jsonpath={.status.phase}=Initialized",
      "--timeout=180s",
    ])
    .catch((err: Error) => {
      throw new Error(`${err.message}\n${addons[0]?.output().slice(-3000)}\n${podReport()}`);
    });
  monitoring = await startMonitoring(
    cluster,
    execFileSync("prometheus", ["--version"], { encoding: "utf8" }),
  );
  console.log(`cluster, deploy/ and monitoring up in ${((Date.now() - started) / 1000).toFixed(0)} s`);
}, 600_000);

afterAll(async () => {
  await monitoring?.stop();
  await Promise.all(addons.map((a) => a.stop()));
  await cluster?.stop();
}, 120_000);

describe("monitoring as deployed", () => {
  it("prometheus-operator renders deploy/monitoring into the configuration Prometheus runs: every kinfer target up", async () => {
    const jobs = (monitoring.config().scrape_configs ?? []).map((c) => c.job_name).sort();
    expect(jobs).toEqual([
      "podMonitor/monitoring/vllm/0",
      "serviceMonitor/monitoring/dcgm-exporter/0",
      "serviceMonitor/monitoring/kinfer-gateway/0",
      "serviceMonitor/monitoring/kinfer-scheduler/0",
    ]);
    expect(monitoring.config().rule_files?.length).toBe(1);
    // The targets are what the monitors select, found through the apiserver: the gateway pods, the GPU
    // scheduler pods, the vLLM pods. Each is up.
    const expected = async () => ({
      "kinfer-gateway": (await podsOf(SYSTEM, "app.kubernetes.io/name=kinfer-gateway")).filter(isReady),
      "kinfer-scheduler": (await podsOf(SYSTEM, "app.kubernetes.io/name=gpu-scheduler")).filter(isReady),
      vllm: (await podsOf(MODELS, "kinfer.io/component=vllm")).filter(isReady),
    });
    const want = await expected();
    const summary = await until(
      "every kinfer target scraped and up",
      async () => {
        const targets = await monitoring.targets();
        const byJob: Record<string, string[]> = {};
        for (const t of targets) {
          if (t.health !== "up") return undefined;
          const job = t.labels.job as string;
          byJob[job] = [...(byJob[job] ?? []), `${t.labels.pod}`].sort();
        }
        for (const [job, pods] of Object.entries(want))
          if ((byJob[job] ?? []).length !== pods.length) return undefined;
        return byJob;
      },
      90_000,
    ).catch((err: Error) => {
      throw new Error(`${err.message}\n${monitoring.logs()}`);
    });
    for (const [job, pods] of Object.entries(want))
      expect(summary[job], job).toEqual(pods.map((p) => p.metadata?.name).sort());
    expect(Object.keys(summary).sort()).toEqual(["kinfer-gateway", "kinfer-scheduler", "vllm"]);
  }, 120_000);
});

void readFileSync;
