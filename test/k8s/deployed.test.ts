/**
 * Deployed as shipped: deploy/ applied for real to a whole cluster (test/k8s/cluster: etcd,
 * kube-apiserver, kube-controller-manager, the default kube-scheduler, kwok GPU and CPU nodes, a kubelet
 * stand-in that runs pods as processes in network namespaces of their own), by the commands of the
 * README's "Deploy to a cluster", and the platform checked as a platform team would check it:
 * - every pod runs from its spec: the gateway and kinfer-scheduler from the production build (node on
 *   dist/, no tsx) as user 65532 on a read-only root, authenticating with their own ServiceAccounts'
 *   tokens; vLLM pods as kinfer-sim with the manifests' command line; nothing crashes or restarts;
 * - the second kube-scheduler (deploy/'s KubeSchedulerConfiguration, leader election on) holds its lease,
 *   with no RBAC denial in its log; every vLLM pod is placed through kinfer-scheduler (devices recorded, a
 *   tensor-parallel pod inside one NVLink domain) and becomes Ready;
 * - each gateway pod discovers the replicas through EndpointSlices in kinfer-models only, and streams over
 *   gRPC, Connect and the OpenAI API; a Service labelled as a model in another namespace gets nothing;
 * - scaling a model up and down changes every gateway's routing within seconds;
 * - a rolling restart of a model, then of the gateway, under load: no stream that could finish within the
 *   grace periods ends early (the counts are printed);
 * - Flagger (built from its module, provider kubernetes) bootstraps llama-3-8b's Canary: the gateway routes
 *   to the -primary copy through the Services Flagger makes, and the model's PodDisruptionBudget counts it;
 * - `kubectl auth can-i` with each ServiceAccount's own token: allowed what it needs, denied the rest;
 * - three gateway replicas share one control state (KinferModel objects): a split set through one admin
 *   API is applied by all within a second and survives a rolling restart of the gateways; the built-in
 *   rollout, turned on as an operator would (config and a canary Deployment), runs on the holder of its
 *   Lease, and when that gateway pod is deleted another takes the Lease and resumes from the stored step.
 * Prometheus, prometheus-adapter and KEDA are not run here (issue #22's tests run the operations loops).
 */
import { execFile } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { CoreV1Api, DiscoveryV1Api, type V1Deployment, type V1Pod } from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse as parseYaml, stringify as stringifyYaml } from "yaml";
import { AdminService, ReplicaState } from "../../gen/es/kinfer/admin/v1/admin_pb.js";
import { type KinferModelObject, objectName } from "../../server/control/kube-control-store.js";
import { freePort } from "../helpers/free-port.js";
import { type Cluster, startCluster } from "./cluster/cluster.js";
import { requireBuild } from "./cluster/images.js";
import {
  type Protocol,
  type StreamOutcome,
  startLoad,
  streamOnce,
  summarize,
} from "./cluster/stream-load.js";

const root = new URL("../..", import.meta.url).pathname;
const GPU_NODES = [
  { name: "gpu-a", product: "NVIDIA-H100-80GB-HBM3", gpus: 8 },
  { name: "gpu-b", product: "NVIDIA-H100-80GB-HBM3", gpus: 8 },
];
const CPU_NODES = ["cpu-a", "cpu-b"];
const QWEN = { model: "qwen2.5-32b", deployment: "qwen2-5-32b-vllm", app: "qwen2-5-32b" };
/** The Canary's model: Flagger runs it as <deployment>-primary, its pods labelled app=<app>-primary. */
const LLAMA = { model: "llama-3-8b", deployment: "llama-3-8b-vllm", app: "llama-3-8b" };
const SYSTEM = "kinfer-system";
const MODELS = "kinfer-models";

let cluster: Cluster;
/** Each README command and what the test did with it. */
const readmeLog: string[] = [];

/**
 * The README's "Deploy to a cluster" commands that cannot run here as written, and what runs instead.
 * Every other command of that block runs verbatim (bash, KUBECONFIG set to the cluster's admin, the
 * built kubectl first on PATH). A key missing from the README fails the test: this table stays honest.
 */
const README_DEVIATIONS: Record<string, { instead?: string[]; skip?: string }> = {
  "kubectl label node <node> kinfer.io/nvlink-domain-size=4": {
    instead: [`kubectl label node ${GPU_NODES.map((n) => n.name).join(" ")} kinfer.io/nvlink-domain-size=4`],
  },
  "kubectl apply -k deploy/models": {
    // Only storage differs: no provisioner here for the per-pod model cache (see the overlay).
    instead: ["kubectl apply -k test/k8s/deployed/models"],
  },
  "helm install prometheus-adapter prometheus-community/prometheus-adapter -n monitoring -f deploy/monitoring/prometheus-adapter-values.yaml":
    { skip: "prometheus-adapter runs in the operations-loops tests (issue #22)" },
  "kubectl -n kinfer-system port-forward svc/kinfer-gateway 8080:80 &": {
    skip: "no kubelet serves port-forward here: the tests stream to the gateway pods' addresses",
  },
  'curl -N http://127.0.0.1:8080/v1/chat/completions -H \'content-type: application/json\' -d \'{"model":"qwen2.5-32b","stream":true,"messages":[{"role":"user","content":"Hello"}]}\'':
    { skip: "the same request runs in the streaming test, to each gateway pod" },
};

/** The commands of the README's block marked `readme-test: cluster`, comments dropped, lines joined. */
function readmeClusterCommands(): string[] {
  const readme = readFileSync(join(root, "README.md"), "utf8");
  const at = readme.indexOf("<!-- readme-test: cluster -->");
  const open = readme.indexOf("```sh\n", at) + 6;
  const block = readme.slice(open, readme.indexOf("\n```", open));
  return block
    .replaceAll("\\\n", " ")
    .split("\n")
    .map((l) => l.replace(/\s+/g, " ").trim())
    .filter((l) => l !== "" && !l.startsWith("#"));
}

async function runReadme() {
  const env = {
    ...process.env,
    KUBECONFIG: cluster.cp.kubeconfig,
    PATH: `${cluster.cp.bin}:${process.env.PATH}`,
  };
  const commands = readmeClusterCommands();
  for (const key of Object.keys(README_DEVIATIONS))
    expect(commands, "a README deviation names a command the README no longer has").toContain(key);
  for (const command of commands) {
    const deviation = README_DEVIATIONS[command];
    if (deviation?.skip !== undefined) {
      readmeLog.push(`skipped: ${command} (${deviation.skip})`);
      continue;
    }
    for (const line of deviation?.instead ?? [command]) {
      readmeLog.push(deviation ? `instead: ${line}` : `ran: ${line}`);
      // Asynchronously: the kubelet stand-in runs in this process while `rollout status` waits for it.
      await new Promise<void>((resolve, reject) =>
        execFile("bash", ["-c", line], { cwd: root, env, timeout: 300_000 }, (err, stdout, stderr) => {
          if (err === null) resolve();
          else reject(new Error(`README step failed: ${line}\n${stdout}\n${stderr}\n${podReport()}`));
        }),
      );
    }
  }
}

const core = () => cluster.kc.makeApiClient(CoreV1Api);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** What the kubelet stand-in knows, for failure messages. */
function podReport(): string {
  const k = cluster.kubelet;
  return [
    `pods: ${[...k.pods.values()].map((p) => `${p.namespace}/${p.name}@${p.ip}${p.readyAt ? "" : " (not ready)"}`).join(", ")}`,
    ...k.failures.map((f) => `failure: ${f}`),
    ...k.crashes.map((c) => `crash: ${c}`),
  ].join("\n");
}

async function until<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs = 60_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn().catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}\n${podReport()}`);
    await sleep(100);
  }
}

async function podsOf(namespace: string, selector: string): Promise<V1Pod[]> {
  return (await core().listNamespacedPod({ namespace, labelSelector: selector })).items;
}
const isReady = (p: V1Pod) =>
  p.metadata?.deletionTimestamp === undefined &&
  (p.status?.conditions ?? []).some((c) => c.type === "Ready" && c.status === "True");

/** Ready endpoints of a Service, from its EndpointSlices (what kube-proxy would balance over). */
async function readyEndpoints(namespace: string, service: string, port: string): Promise<string[]> {
  const slices = await cluster.kc.makeApiClient(DiscoveryV1Api).listNamespacedEndpointSlice({
    namespace,
    labelSelector: `kubernetes.io/service-name=${service}`,
  });
  return slices.items.flatMap((s) => {
    const p = s.ports?.find((x) => x.name === port)?.port;
    return (s.endpoints ?? [])
      .filter((e) => e.conditions?.ready === true)
      .map((e) => `http://${e.addresses[0]}:${p}`);
  });
}

let adminToken = "";
/** Where each container's output stood once the platform was installed and discovering (uid/container). */
const logOffsets = new Map<string, number>();
/** The admin API of the gateway pod at `ip`. */
function adminAt(ip: string) {
  const bearer: Interceptor = (next) => (req) => {
    req.header.set("authorization", `Bearer ${adminToken}`);
    return next(req);
  };
  return createClient(
    AdminService,
    createConnectTransport({ baseUrl: `http://${ip}:8081`, httpVersion: "1.1", interceptors: [bearer] }),
  );
}
/** The weight of each version of `model` at the gateway pod at `ip`. */
async function weightsAt(ip: string, model: string): Promise<Record<string, number>> {
  const { model: m } = await adminAt(ip).getModel({ model });
  return Object.fromEntries((m?.versions ?? []).map((v) => [v.name, v.weight]));
}
/** The replica URLs the gateway at `ip` routes `model` to (state READY), from its admin API. */
async function routed(ip: string, model: string): Promise<string[]> {
  const { model: m } = await adminAt(ip).getModel({ model });
  return (m?.versions ?? [])
    .flatMap((v) => v.replicas)
    .filter((r) => r.state === ReplicaState.READY)
    .map((r) => r.url)
    .sort();
}

const gatewayIps = async () =>
  (await podsOf(SYSTEM, "app.kubernetes.io/name=kinfer-gateway"))
    .filter(isReady)
    .map((p) => p.status?.podIP as string);

beforeAll(async () => {
  requireBuild();
  const started = Date.now();
  cluster = await startCluster({ gpuNodes: GPU_NODES, cpuNodes: CPU_NODES });
  // The README's prerequisites: prometheus-operator's namespace, the CRDs of prometheus-operator, KEDA
  // and Flagger, and Flagger itself (watching kinfer-models; it needs metrics only to judge a canary).
  await cluster.kubectl(["create", "namespace", "monitoring"]);
  const crds = join(cluster.cp.bin, "crds");
  for (const f of readdirSync(crds)) await cluster.kubectl(["apply", "--server-side", "-f", join(crds, f)]);
  await cluster.kubectl(["wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"]);
  cluster.cp.spawnBinary("flagger", [
    `-kubeconfig=${cluster.cp.kubeconfig}`,
    "-mesh-provider=kubernetes",
    "-metrics-server=http://127.0.0.1:9",
    `-namespace=${MODELS}`,
    `-port=${await freePort()}`,
    "-control-loop-interval=2s",
    "-enable-leader-election=false",
  ]);
  await runReadme();
  await cluster
    .kubectl([
      "-n",
      MODELS,
      "wait",
      `canary/${LLAMA.deployment}`,
      "--for=jsonpath={.status.phase}=Initialized",
      "--timeout=120s",
    ])
    .catch((err: Error) => {
      throw new Error(`${err.message}\n${cluster.cp.logOf("flagger").slice(-3000)}\n${podReport()}`);
    });
  adminToken = Buffer.from(
    await cluster.kubectl([
      "-n",
      SYSTEM,
      "get",
      "secret",
      "kinfer-gateway-admin",
      "-o",
      "jsonpath={.data.token}",
    ]),
    "base64",
  ).toString();
  // The gateway may not read kinfer-models until deploy/models (the namespace and its Role) is applied:
  // until then its discovery is refused and retries (README). From the moment it routes, nothing may be.
  for (const ip of await gatewayIps())
    await until(`gateway ${ip} to discover replicas`, async () =>
      (await routed(ip, QWEN.model)).length > 0 ? true : undefined,
    );
  for (const p of cluster.kubelet.pods.values())
    for (const rc of p.containers) logOffsets.set(`${p.uid}/${rc.name}`, rc.current.output().length);
  console.log(
    `cluster started and deploy/ installed and serving in ${((Date.now() - started) / 1000).toFixed(0)} s`,
  );
}, 600_000);

afterAll(async () => {
  await cluster?.stop();
}, 120_000);

describe("deploy/ as shipped, on a real control plane", () => {
  it("the README's commands install it; every pod runs from its spec, with no crash or restart", async () => {
    expect(readmeLog.filter((l) => l.startsWith("ran: kubectl apply -k deploy/base"))).toHaveLength(1);
    const pods = (await core().listPodForAllNamespaces()).items;
    const byApp = (name: string) =>
      pods.filter((p) => p.metadata?.labels?.["app.kubernetes.io/name"] === name && isReady(p));
    expect(byApp("kinfer-gateway"), podReport()).toHaveLength(2);
    expect(byApp("gpu-scheduler"), podReport()).toHaveLength(2);
    expect(
      pods.filter((p) => p.metadata?.labels?.["kinfer.io/component"] === "vllm" && isReady(p)),
    ).toHaveLength(2);
    expect(cluster.kubelet.failures).toEqual([]);
    expect(cluster.kubelet.crashes).toEqual([]);
    // The programs are the production build: node on /app/dist, no tsx, as user 65532 on a read-only root.
    for (const p of cluster.kubelet.pods.values()) {
      for (const rc of p.containers.filter((c) => c.name === "gateway" || c.name === "kinfer-scheduler")) {
        const pid = rc.current.process.pid as number;
        const cmdline = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
        expect(cmdline.join(" ")).toMatch(/^node .*\/app\/dist\/(server|scheduler)\/main\.js /);
        expect(cmdline.join(" ")).not.toMatch(/tsx/);
        expect(readFileSync(`/proc/${pid}/status`, "utf8")).toMatch(/^Uid:\s+65532\s/m);
        const rootMount = readFileSync(`/proc/${pid}/mountinfo`, "utf8")
          .split("\n")
          .map((l) => l.split(" "))
          .find((f) => f[4] === "/");
        expect(rootMount?.[5], `${p.name}/${rc.name}`).toMatch(/^ro\b/);
      }
    }
  });

  it("the GPU scheduler holds its lease in kinfer-system under its own ServiceAccount, denied nothing it needs", async () => {
    const schedulers = (await podsOf(SYSTEM, "app.kubernetes.io/name=gpu-scheduler")).map(
      (p) => p.metadata?.name,
    );
    const holder = await until("the gpu-scheduler lease", async () => {
      const h = await cluster.kubectl([
        "-n",
        SYSTEM,
        "get",
        "lease",
        "gpu-scheduler",
        "-o",
        "jsonpath={.spec.holderIdentity}",
      ]);
      return h === "" ? undefined : h;
    });
    expect(schedulers).toContain(holder.split("_")[0]);
    for (const p of cluster.kubelet.pods.values()) {
      for (const rc of p.containers) {
        // The token it authenticates with is its ServiceAccount's, bound to its pod.
        const token = readFileSync(
          join(p.dir, "volumes", await tokenVolume(p.name, p.namespace), "token"),
          "utf8",
        );
        const claims = JSON.parse(Buffer.from(token.split(".")[1] as string, "base64url").toString());
        expect(claims.sub).toBe(`system:serviceaccount:${p.namespace}:${serviceAccountOf(p.labels)}`);
        expect(claims["kubernetes.io"].pod.name).toBe(p.name);
        // kube-scheduler from its start; the gateway from the moment it discovered (see beforeAll).
        const from = rc.name === "gateway" ? (logOffsets.get(`${p.uid}/${rc.name}`) ?? 0) : 0;
        expect(rc.current.output().slice(from), `${p.name}/${rc.name}`).not.toMatch(/forbidden/i);
      }
    }
  });

  it("places every vLLM pod through kinfer-scheduler: devices recorded, a 2-GPU pod in one NVLink domain", async () => {
    const vllm = (await podsOf(MODELS, "kinfer.io/component=vllm")).filter(isReady);
    expect(vllm).toHaveLength(2);
    for (const p of vllm) {
      const gpus = Number(p.spec?.containers[0]?.resources?.limits?.["nvidia.com/gpu"]);
      const devices = (p.metadata?.annotations?.["kinfer.io/gpu-devices"] ?? "").split(",").filter(Boolean);
      expect(devices, p.metadata?.name).toHaveLength(gpus);
      expect(GPU_NODES.map((n) => n.name)).toContain(p.spec?.nodeName);
      const domains = new Set(devices.map((d) => Math.floor(Number(d.split(":")[0]) / 4)));
      expect(domains.size, `${p.metadata?.name}: ${devices}`).toBe(1);
    }
    // The binds were kinfer-scheduler's: the leader's sidecar counted them (read-only ops port).
    const metrics = await Promise.all(
      (await podsOf(SYSTEM, "app.kubernetes.io/name=gpu-scheduler")).map(async (p) =>
        (await fetch(`http://${p.status?.podIP}:8889/metrics`)).text(),
      ),
    );
    const bound = metrics
      .map((m) =>
        Number(/kinfer_scheduler_decisions_total\{verb="bind",result="bound"\} (\d+)/.exec(m)?.[1] ?? 0),
      )
      .reduce((a, b) => a + b, 0);
    expect(bound).toBeGreaterThanOrEqual(2);
    // The extender itself is on the pod's loopback only: nothing answers on the pod address.
    const ip = (await podsOf(SYSTEM, "app.kubernetes.io/name=gpu-scheduler"))[0]?.status?.podIP;
    await expect(fetch(`http://${ip}:8888/healthz`, { signal: AbortSignal.timeout(2000) })).rejects.toThrow();
  });

  it("each gateway pod discovers the replicas through EndpointSlices and streams over gRPC, Connect and OpenAI", async () => {
    const urls = async (app: string) =>
      (await podsOf(MODELS, `app=${app}`))
        .filter(isReady)
        .map((p) => `http://${p.status?.podIP}:8000`)
        .sort();
    // llama-3-8b through Flagger's primary (its Service llama-3-8b-vllm-primary, labelled version stable).
    const expected = {
      [QWEN.model]: await urls(QWEN.app),
      [LLAMA.model]: await urls(`${LLAMA.app}-primary`),
    };
    expect(expected[LLAMA.model]).toHaveLength(1);
    for (const ip of await gatewayIps()) {
      for (const [model, replicas] of Object.entries(expected)) {
        expect(
          await until(`gateway ${ip} routing ${model}`, async () => {
            const r = await routed(ip, model);
            return r.length === replicas.length ? r : undefined;
          }),
        ).toEqual(replicas);
        for (const protocol of ["grpc", "connect", "openai"] as Protocol[]) {
          const outcome = await streamOnce(`http://${ip}:8080`, protocol, { model, maxTokens: 32 });
          expect(outcome, `${model} over ${protocol} via ${ip}`).toMatchObject({ result: "completed" });
        }
      }
    }
  });

  it("Flagger's primary copy of a model is placed like the rest and counted by the model's PodDisruptionBudget", async () => {
    const primary = (await podsOf(MODELS, `app=${LLAMA.app}-primary`)).filter(isReady);
    expect(primary).toHaveLength(1);
    expect(primary[0]?.metadata?.annotations?.["kinfer.io/gpu-devices"]).toMatch(/^\d:1000$/);
    // Flagger scaled the canary target to 0 after bootstrap: the PDB's pods are the primary's.
    const pdb = JSON.parse(
      await cluster.kubectl(["-n", MODELS, "get", "pdb", LLAMA.deployment, "-o", "json"]),
    );
    expect(pdb.status.expectedPods).toBe(1);
    expect(pdb.status.currentHealthy).toBe(1);
  });

  it("discovery stays in kinfer-models: a Service labelled as a model in another namespace receives nothing", async () => {
    await cluster.kubectl(["create", "namespace", "elsewhere"]);
    await cluster.kubectl(["apply", "-f", "-"], {
      input: JSON.stringify({
        apiVersion: "v1",
        kind: "List",
        items: [
          {
            apiVersion: "v1",
            kind: "Pod",
            metadata: { name: "impostor", namespace: "elsewhere", labels: { app: "impostor" } },
            spec: {
              containers: [
                {
                  name: "vllm",
                  image: "vllm/vllm-openai:v0.18.0",
                  command: ["vllm", "serve"],
                  args: ["impostor", `--served-model-name=${QWEN.model}`, "--port=8000"],
                  ports: [{ name: "http", containerPort: 8000 }],
                  readinessProbe: { httpGet: { path: "/health", port: "http" } },
                },
              ],
            },
          },
          {
            apiVersion: "v1",
            kind: "Service",
            metadata: {
              name: "impostor",
              namespace: "elsewhere",
              labels: { "kinfer.io/model": QWEN.model, "kinfer.io/version": "stable" },
            },
            spec: {
              selector: { app: "impostor" },
              ports: [{ name: "http", port: 8000, targetPort: "http" }],
            },
          },
        ],
      }),
    });
    const [impostor] = await until("the impostor's endpoint", async () => {
      const e = await readyEndpoints("elsewhere", "impostor", "http");
      return e.length === 1 ? e : undefined;
    });
    await sleep(2000); // well past discovery's reaction time (the scaling test measures it)
    for (const ip of await gatewayIps()) {
      expect(await routed(ip, QWEN.model)).not.toContain(impostor);
      for (let i = 0; i < 5; i++)
        expect(
          await streamOnce(`http://${ip}:8080`, "openai", { model: QWEN.model, maxTokens: 8 }),
        ).toMatchObject({
          result: "completed",
        });
    }
    const metrics = await (await fetch(`${impostor}/metrics`)).text();
    expect(metrics).not.toMatch(/vllm:request_success_total\{[^}]*\} [1-9]/);
    await cluster.kubectl(["delete", "namespace", "elsewhere", "--wait=false"]);
  });

  it("scaling a model up and down changes every gateway's routing within seconds", async () => {
    const scale = (n: number) =>
      cluster.kubectl(["-n", MODELS, "scale", `deployment/${QWEN.deployment}`, `--replicas=${n}`]);
    const readyUrls = async () =>
      (await podsOf(MODELS, `app=${QWEN.app}`))
        .filter(isReady)
        .map((p) => `http://${p.status?.podIP}:8000`)
        .sort();
    const gateways = await gatewayIps();
    const before = await readyUrls();
    await scale(3);
    const up = await until("3 ready replicas", async () => {
      const u = await readyUrls();
      return u.length === 3 ? u : undefined;
    });
    const readyAt = Date.now();
    const upDelays = await Promise.all(
      gateways.map(async (ip) => {
        await until(`gateway ${ip} routes to 3`, async () =>
          JSON.stringify(await routed(ip, QWEN.model)) === JSON.stringify(up) ? true : undefined,
        );
        return Date.now() - readyAt;
      }),
    );
    await scale(1);
    const deletedAt = Date.now();
    const downDelays = await Promise.all(
      gateways.map(async (ip) => {
        await until(`gateway ${ip} routes to 1`, async () =>
          (await routed(ip, QWEN.model)).length === 1 ? true : undefined,
        );
        return Date.now() - deletedAt;
      }),
    );
    console.log(
      `scaling ${QWEN.deployment} 1 -> 3 -> 1: every gateway routed to the new replicas ${Math.max(...upDelays)} ms after they were Ready, and stopped routing to the removed ones ${Math.max(...downDelays)} ms after the scale-in`,
    );
    expect(before).toHaveLength(1);
    expect(Math.max(...upDelays)).toBeLessThan(5000);
    expect(Math.max(...downDelays)).toBeLessThan(5000);
    await scale(2);
    await until("2 ready replicas, and the removed ones gone", async () => {
      const pods = await podsOf(MODELS, `app=${QWEN.app}`);
      return pods.length === 2 && pods.every(isReady) ? true : undefined;
    });
  });

  /** Load through the gateway Service's ready endpoints while `restart` runs, until `settled`. */
  async function underLoad(what: string, restart: () => Promise<void>): Promise<StreamOutcome[]> {
    let targets = await readyEndpoints(SYSTEM, "kinfer-gateway", "http");
    let watching = true;
    const watcher = (async () => {
      while (watching) {
        targets = await readyEndpoints(SYSTEM, "kinfer-gateway", "http").catch(() => targets);
        await sleep(100);
      }
    })();
    const load = startLoad({ targets: () => targets, model: QWEN.model, concurrency: 9 });
    await sleep(3000);
    const started = Date.now();
    await restart();
    const outcomes = await load.stop();
    watching = false;
    await watcher;
    const s = summarize(outcomes);
    if (s.refused + s.endedEarly > 0) console.log(gatewayWarnings(started - 3000));
    console.log(
      `${what}: ${s.streams} streams in ${((Date.now() - started) / 1000).toFixed(0)} s (longest ${(s.longest / 1000).toFixed(1)} s): ${s.completed} completed, ${s.refused} refused before their first token, ${s.endedEarly} ended early${s.errors.length ? `\n  ${s.errors.join("\n  ")}` : ""}`,
    );
    return outcomes;
  }

  /**
   * What the gateway pods logged at warn level or above since `since`, and every replica health change:
   * printed when a stream under load failed, so that a failure says which replica did what.
   */
  function gatewayWarnings(since: number): string {
    const lines: string[] = [];
    for (const pod of cluster.kubelet.pods.values()) {
      if (pod.labels["app.kubernetes.io/name"] !== "kinfer-gateway") continue;
      for (const c of pod.containers) {
        let text = "";
        try {
          text = readFileSync(join(pod.dir, "containers", c.name, "output.log"), "utf8");
        } catch {
          continue;
        }
        for (const line of text.split("\n")) {
          let entry: { level?: number; time?: string; msg?: string };
          try {
            entry = JSON.parse(line);
          } catch {
            continue;
          }
          if (Date.parse(entry.time ?? "") < since) continue;
          if ((entry.level ?? 0) >= 40 || entry.msg === "replica health changed")
            lines.push(`  ${pod.name}: ${line}`);
        }
      }
    }
    return `gateway warnings and health changes:\n${lines.join("\n")}`;
  }

  /** Waits until every pod of `selector` that existed before is gone (its termination finished). */
  async function rolloutDone(namespace: string, deployment: string, selector: string, old: string[]) {
    await cluster.kubectl(["-n", namespace, "rollout", "restart", `deployment/${deployment}`]);
    await cluster.kubectl([
      "-n",
      namespace,
      "rollout",
      "status",
      `deployment/${deployment}`,
      "--timeout=120s",
    ]);
    await until(
      `the old ${deployment} pods to finish terminating`,
      async () => {
        const names = (await podsOf(namespace, selector)).map((p) => p.metadata?.name as string);
        return old.some((o) => names.includes(o)) ? undefined : true;
      },
      120_000,
    );
  }

  /**
   * Every old pod exited by itself after SIGTERM (none was killed at the end of its grace period), and
   * at least one was still finishing streams then: the drain itself was exercised, not just the preStop.
   */
  function expectDrained(old: string[]) {
    const stops = cluster.kubelet.terminations.filter((t) => old.some((o) => t.pod.endsWith(`/${o}`)));
    console.log(`  exits after SIGTERM: ${stops.map((t) => `${t.pod} ${t.stopMs} ms`).join(", ")}`);
    expect(stops).toHaveLength(old.length);
    for (const t of stops) expect(t, JSON.stringify(t)).toMatchObject({ killed: false, exitCode: 0 });
    expect(Math.max(...stops.map((t) => t.stopMs))).toBeGreaterThan(1000);
  }

  it("a rolling restart of a model loses no stream", async () => {
    const selector = `app=${QWEN.app}`;
    const old = (await podsOf(MODELS, selector)).filter(isReady).map((p) => p.metadata?.name as string);
    const outcomes = await underLoad(`rolling restart of ${QWEN.deployment}`, () =>
      rolloutDone(MODELS, QWEN.deployment, selector, old),
    );
    const s = summarize(outcomes);
    expect(s.endedEarly, s.errors.join("\n")).toBe(0);
    expect(s.refused, s.errors.join("\n")).toBe(0);
    expect(s.completed).toBeGreaterThan(20);
    // The old replicas drained (vLLM's --shutdown-timeout): each exited on SIGTERM, none was killed.
    expectDrained(old);
  }, 240_000);

  it("a rolling restart of the gateway loses no stream", async () => {
    const selector = "app.kubernetes.io/name=kinfer-gateway";
    const old = (await podsOf(SYSTEM, selector)).filter(isReady).map((p) => p.metadata?.name as string);
    const outcomes = await underLoad("rolling restart of kinfer-gateway", () =>
      rolloutDone(SYSTEM, "kinfer-gateway", selector, old),
    );
    const s = summarize(outcomes);
    expect(s.endedEarly, s.errors.join("\n")).toBe(0);
    expect(s.refused, s.errors.join("\n")).toBe(0);
    expect(s.completed).toBeGreaterThan(20);
    expectDrained(old);
  }, 240_000);

  it("kubectl auth can-i with each ServiceAccount's token: allowed what it needs, denied the rest", async () => {
    const cases: [sa: string, args: string, expected: "yes" | "no"][] = [
      // The gateway: EndpointSlices in the namespaces its config lists, nothing else anywhere.
      ["kinfer-system/kinfer-gateway", "watch endpointslices.discovery.k8s.io -n kinfer-models", "yes"],
      ["kinfer-system/kinfer-gateway", "list endpointslices.discovery.k8s.io -n kinfer-system", "no"],
      ["kinfer-system/kinfer-gateway", "list endpointslices.discovery.k8s.io -n default", "no"],
      ["kinfer-system/kinfer-gateway", "list endpointslices.discovery.k8s.io --all-namespaces", "no"],
      ["kinfer-system/kinfer-gateway", "get pods -n kinfer-models", "no"],
      ["kinfer-system/kinfer-gateway", "get secrets -n kinfer-system", "no"],
      // Its control state: KinferModels and their status, the rollout Lease by name, the keys Secret.
      ["kinfer-system/kinfer-gateway", "update kinfermodels.kinfer.io -n kinfer-system", "yes"],
      ["kinfer-system/kinfer-gateway", "update kinfermodels.kinfer.io/status -n kinfer-system", "yes"],
      ["kinfer-system/kinfer-gateway", "delete kinfermodels.kinfer.io -n kinfer-system", "no"],
      ["kinfer-system/kinfer-gateway", "update kinfermodels.kinfer.io -n kinfer-models", "no"],
      ["kinfer-system/kinfer-gateway", "update leases/kinfer-gateway-rollout -n kinfer-system", "yes"],
      ["kinfer-system/kinfer-gateway", "update leases/gpu-scheduler -n kinfer-system", "no"],
      ["kinfer-system/kinfer-gateway", "update secrets/kinfer-gateway-keys -n kinfer-system", "yes"],
      ["kinfer-system/kinfer-gateway", "get secrets/kinfer-gateway-admin -n kinfer-system", "no"],
      // The GPU scheduler pod (kube-scheduler and kinfer-scheduler): its lease, scheduling, device records.
      ["kinfer-system/gpu-scheduler", "update leases/gpu-scheduler -n kinfer-system", "yes"],
      ["kinfer-system/gpu-scheduler", "create leases -n kinfer-system", "yes"],
      ["kinfer-system/gpu-scheduler", "update leases/gpu-scheduler -n kube-system", "no"],
      [
        "kinfer-system/gpu-scheduler",
        "get configmaps/extension-apiserver-authentication -n kube-system",
        "yes",
      ],
      ["kinfer-system/gpu-scheduler", "get configmaps/kube-root-ca.crt -n kube-system", "no"],
      ["kinfer-system/gpu-scheduler", "create pods --subresource=binding -n kinfer-models", "yes"],
      ["kinfer-system/gpu-scheduler", "create bindings -n kinfer-models", "yes"],
      ["kinfer-system/gpu-scheduler", "patch pods -n kinfer-models", "yes"],
      ["kinfer-system/gpu-scheduler", "watch nodes", "yes"],
      ["kinfer-system/gpu-scheduler", "get secrets -n kinfer-system", "no"],
      ["kinfer-system/gpu-scheduler", "create deployments.apps -n kinfer-models", "no"],
      ["kinfer-system/gpu-scheduler", "delete nodes", "no"],
      // Inherited from the built-in system:kube-scheduler role, as every second scheduler that binds it:
      // the default scheduler's lease (README: what binding system:kube-scheduler grants).
      ["kinfer-system/gpu-scheduler", "update leases/kube-scheduler -n kube-system", "yes"],
      // The model pods run as their namespace's default ServiceAccount, with no permission.
      ["kinfer-models/default", "list pods -n kinfer-models", "no"],
      ["kinfer-models/default", "get secrets -n kinfer-models", "no"],
    ];
    const kubeconfigs = new Map<string, string>();
    const answers: string[] = [];
    for (const [sa, args, expected] of cases) {
      const [ns, name] = sa.split("/") as [string, string];
      if (!kubeconfigs.has(sa)) kubeconfigs.set(sa, await cluster.serviceAccountKubeconfig(ns, name));
      let answer: string;
      try {
        answer = (
          await cluster.kubectl(["auth", "can-i", ...args.split(" ")], {
            kubeconfig: kubeconfigs.get(sa) as string,
          })
        ).trim();
      } catch (err) {
        answer = String((err as { stdout?: string }).stdout ?? "").trim();
      }
      answers.push(`${sa} ${args}: ${answer} (expected ${expected})`);
    }
    expect(answers.filter((a) => !/: (\w+) \(expected \1\)$/.test(a))).toEqual([]);
  });

  it("three gateway replicas share one control state; the built-in rollout survives the deletion of its leader", async () => {
    // Three replicas, as an operator raises the HPA's floor.
    await cluster.kubectl([
      "-n",
      SYSTEM,
      "patch",
      "hpa",
      "kinfer-gateway",
      "--type=merge",
      "-p",
      '{"spec":{"minReplicas":3}}',
    ]);
    await cluster.kubectl(["-n", SYSTEM, "scale", "deployment/kinfer-gateway", "--replicas=3"]);
    const discovering = async () => {
      const ips = await gatewayIps();
      if (ips.length !== 3) return undefined;
      for (const ip of ips) if ((await routed(ip, QWEN.model)).length === 0) return undefined;
      return ips;
    };
    const ips = await until("3 gateways discovering", discovering, 120_000);

    // A split through one gateway's admin API: every gateway applies it within a second.
    await adminAt(ips[0] as string).setTrafficSplit({
      model: LLAMA.model,
      weights: [
        { version: "stable", weight: 70 },
        { version: "canary", weight: 30 },
      ],
    });
    const set = Date.now();
    for (const ip of ips)
      await until(`gateway ${ip} applies the split`, async () =>
        (await weightsAt(ip, LLAMA.model)).canary === 30 ? true : undefined,
      );
    const applied = Date.now() - set;
    console.log(`a split set through one of 3 gateways was in force on all 3 after ${applied} ms`);
    expect(applied).toBeLessThan(1000);
    const stored = async (model: string) =>
      JSON.parse(
        await cluster.kubectl(["-n", SYSTEM, "get", "kinfermodel", objectName(model), "-o", "json"]),
      ) as KinferModelObject;
    expect((await stored(LLAMA.model)).spec?.weights).toEqual([
      { version: "canary", weight: 30 },
      { version: "stable", weight: 70 },
    ]);

    // The built-in rollout for qwen2.5-32b, turned on as an operator would: the gateway's config gains a
    // canary version and rollout settings (short steps, for the test), and the gateways roll to it.
    const deployment = JSON.parse(
      await cluster.kubectl(["-n", SYSTEM, "get", "deployment", "kinfer-gateway", "-o", "json"]),
    ) as V1Deployment;
    const configMap = deployment.spec?.template.spec?.volumes?.find((v) => v.name === "config")?.configMap
      ?.name;
    const text = JSON.parse(
      await cluster.kubectl(["-n", SYSTEM, "get", "configmap", configMap as string, "-o", "json"]),
    ).data["gateway.yaml"] as string;
    const config = parseYaml(text) as { models: { name: string; versions: unknown[]; rollout?: unknown }[] };
    const qwen = config.models.find((m) => m.name === QWEN.model) as (typeof config.models)[0];
    qwen.versions = [
      { name: "stable", weight: 100 },
      { name: "canary", weight: 0 },
    ];
    qwen.rollout = { intervalMs: 8000, stepWeight: 20, maxWeight: 80, minRequests: 3, maxTtftRatio: 100 };
    await cluster.kubectl(["apply", "-f", "-"], {
      input: JSON.stringify({
        apiVersion: "v1",
        kind: "ConfigMap",
        metadata: { name: "kinfer-gateway-rollout", namespace: SYSTEM },
        data: { "gateway.yaml": stringifyYaml(config) },
      }),
    });
    const before = (await podsOf(SYSTEM, "app.kubernetes.io/name=kinfer-gateway")).map(
      (p) => p.metadata?.name as string,
    );
    await cluster.kubectl([
      "-n",
      SYSTEM,
      "patch",
      "deployment",
      "kinfer-gateway",
      "-p",
      '{"spec":{"template":{"spec":{"volumes":[{"name":"config","configMap":{"name":"kinfer-gateway-rollout"}}]}}}}',
    ]);
    await cluster.kubectl(["-n", SYSTEM, "rollout", "status", "deployment/kinfer-gateway", "--timeout=300s"]);
    const restarted = await until(
      "3 new gateways discovering",
      async () => {
        const names = (await podsOf(SYSTEM, "app.kubernetes.io/name=kinfer-gateway")).map(
          (p) => p.metadata?.name,
        );
        return names.some((n) => before.includes(n as string)) ? undefined : discovering();
      },
      300_000,
    );
    // The split set before the restart is still in force: it lives in the cluster, not in a process.
    for (const ip of restarted) expect((await weightsAt(ip, LLAMA.model)).canary).toBe(30);

    // The new version, deployed as a copy of stable labelled kinfer.io/version=canary.
    const stableDeployment = JSON.parse(
      await cluster.kubectl(["-n", MODELS, "get", "deployment", QWEN.deployment, "-o", "json"]),
    ) as V1Deployment;
    const app = `${QWEN.app}-canary`;
    const canary = {
      apiVersion: "v1",
      kind: "List",
      items: [
        {
          apiVersion: "apps/v1",
          kind: "Deployment",
          metadata: {
            name: `${QWEN.deployment}-canary`,
            namespace: MODELS,
            labels: { ...stableDeployment.metadata?.labels, app },
          },
          spec: {
            ...stableDeployment.spec,
            replicas: 1,
            selector: { matchLabels: { app } },
            template: {
              ...stableDeployment.spec?.template,
              metadata: { labels: { ...stableDeployment.spec?.template.metadata?.labels, app } },
            },
          },
        },
        {
          apiVersion: "v1",
          kind: "Service",
          metadata: {
            name: `${QWEN.deployment}-canary`,
            namespace: MODELS,
            labels: { "kinfer.io/model": QWEN.model, "kinfer.io/version": "canary" },
          },
          spec: { selector: { app }, ports: [{ name: "http", port: 8000, targetPort: "http" }] },
        },
      ],
    };
    await cluster.kubectl(["apply", "-f", "-"], { input: JSON.stringify(canary) });

    // Load through the gateways while the rollout runs, so that whoever leads has requests to judge.
    let targets = await readyEndpoints(SYSTEM, "kinfer-gateway", "http");
    let watching = true;
    const watcher = (async () => {
      while (watching) {
        targets = await readyEndpoints(SYSTEM, "kinfer-gateway", "http").catch(() => targets);
        await sleep(100);
      }
    })();
    // Short requests, many of them: the leader judges each step on its own share of them.
    const load = startLoad({ targets: () => targets, model: QWEN.model, concurrency: 12, maxTokens: 4 });
    try {
      const rolloutOf = async () => (await stored(QWEN.model)).status?.rollout;
      let last: unknown;
      await until(
        "the rollout past 40%",
        async () => {
          last = await rolloutOf();
          return ((last as { canaryWeight?: number } | undefined)?.canaryWeight ?? 0) >= 40
            ? true
            : undefined;
        },
        180_000,
      ).catch((err: Error) => {
        throw new Error(`${err.message}\nstored rollout: ${JSON.stringify(last)}`);
      });
      const holder = async () =>
        (
          await cluster.kubectl([
            "-n",
            SYSTEM,
            "get",
            "lease",
            "kinfer-gateway-rollout",
            "-o",
            "jsonpath={.spec.holderIdentity}",
          ])
        ).trim();
      const leader = await holder();
      const atHandover = (await rolloutOf())?.canaryWeight as number;
      expect(restarted.length).toBe(3);
      // The leader's pod is deleted (a node drain, a scale-in): it drains, releases the Lease, and exits.
      await cluster.kubectl(["-n", SYSTEM, "delete", "pod", leader, "--wait=false"]);
      const next = await until(
        "another gateway to hold the Lease",
        async () => {
          const h = await holder();
          return h !== "" && h !== leader ? h : undefined;
        },
        60_000,
      );
      // Steps are 8 s apart: the rollout is still under way when the next leader takes it over.
      const taken = await rolloutOf();
      expect(taken?.phase).toBe("progressing");
      const seen: number[] = [];
      await until(
        "the rollout promoted by the next leader",
        async () => {
          const r = await rolloutOf();
          if (r !== undefined) seen.push(r.canaryWeight);
          return r?.phase === "promoted" ? true : undefined;
        },
        180_000,
      );
      console.log(
        `the rollout went on from ${atHandover}% after its leader ${leader} was deleted; ${next} took the Lease at ${taken?.canaryWeight}% and promoted the canary (weights seen: ${[...new Set(seen)].join(", ")})`,
      );
      expect(Math.min(...seen)).toBeGreaterThanOrEqual(atHandover);
      for (const ip of await gatewayIps())
        await until(`gateway ${ip} sends all of qwen to the canary`, async () =>
          (await weightsAt(ip, QWEN.model)).canary === 100 ? true : undefined,
        );
    } finally {
      const s = summarize(await load.stop());
      watching = false;
      await watcher;
      console.log(
        `  load during the rollout: ${s.streams} streams, ${s.completed} completed, ${s.refused} refused, ${s.endedEarly} ended early${s.errors.length ? `\n  ${s.errors.slice(0, 10).join("\n  ")}` : ""}`,
      );
      expect(s.endedEarly, s.errors.join("\n")).toBe(0);
    }
  }, 600_000);
});

/** The name of the pod's ServiceAccount token volume (kube-api-access-*, added by admission). */
async function tokenVolume(pod: string, namespace: string): Promise<string> {
  const spec = JSON.parse(await cluster.kubectl(["-n", namespace, "get", "pod", pod, "-o", "json"])) as V1Pod;
  return (spec.spec?.volumes ?? []).find((v) => v.name.startsWith("kube-api-access-"))?.name as string;
}

/** The ServiceAccount deploy/ gives the pods with these labels. */
function serviceAccountOf(labels: Readonly<Record<string, string>>): string {
  if (labels["app.kubernetes.io/name"] === "kinfer-gateway") return "kinfer-gateway";
  if (labels["app.kubernetes.io/name"] === "gpu-scheduler") return "gpu-scheduler";
  return "default";
}
