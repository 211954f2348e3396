/**
 * A whole Kubernetes cluster on this machine, for the tests that run deploy/ as shipped: etcd,
 * kube-apiserver (ServiceAccounts on, serving on the pod network's host address), kube-controller-manager
 * (Deployments, ReplicaSets, EndpointSlices, HPA, PDB, garbage collection, namespaces, ServiceAccounts and
 * their CA, node lifecycle), the default kube-scheduler, kwok running the nodes (GPU nodes with
 * nvidia.com/gpu capacity, product and NVLink-domain labels, and CPU nodes), and the kubelet stand-in
 * that runs the pods bound to them as processes (kubelet.ts). Everything is built from pinned Go modules
 * (test/k8s/build.sh) and torn down by stop(), network namespaces included.
 *
 * The cluster's own components (controller-manager, default scheduler, kwok, the kubelet stand-in) use
 * the admin credentials, as a cluster's control plane has its own; what deploy/ installs runs under the
 * ServiceAccounts deploy/ gives it.
 */
import { execFile } from "node:child_process";
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { CoreV1Api, KubeConfig, type V1Node } from "@kubernetes/client-node";
import { Agent, request } from "undici";
import { freePort } from "../../helpers/free-port.js";
import { type ControlPlane, startControlPlane } from "../control-plane.js";
import { type Kubelet, startKubelet } from "./kubelet.js";
import { createPodNetwork, type PodNetwork } from "./pod-network.js";

const here = new URL(".", import.meta.url).pathname;

export interface GpuNodeSpec {
  readonly name: string;
  /** nvidia.com/gpu.product, e.g. NVIDIA-H100-80GB-HBM3. */
  readonly product: string;
  readonly gpus: number;
}

export interface ClusterOptions {
  /** GPU nodes: tainted nvidia.com/gpu:NoSchedule, as GPU node pools usually are. */
  readonly gpuNodes: readonly GpuNodeSpec[];
  /** CPU nodes, for the platform's own pods. */
  readonly cpuNodes: readonly string[];
}

export interface Cluster {
  readonly cp: ControlPlane;
  readonly network: PodNetwork;
  readonly kubelet: Kubelet;
  /** Admin credentials. */
  readonly kc: KubeConfig;
  readonly nodes: readonly string[];
  /**
   * Runs kubectl (admin, or the kubeconfig given); resolves with its stdout, rejects with its stdout and
   * stderr. Asynchronous: the kubelet stand-in runs in this process and must go on while kubectl waits.
   */
  kubectl(args: readonly string[], options?: { input?: string; kubeconfig?: string }): Promise<string>;
  /** A kubeconfig file with a token of the ServiceAccount `namespace/name` (TokenRequest, 1 hour). */
  serviceAccountKubeconfig(namespace: string, name: string): Promise<string>;
  /** The last lines the cluster's own components printed, for failure messages. */
  logs(): string;
  stop(): Promise<void>;
}

async function waitHealthy(what: string, url: string, log: () => string, timeoutMs = 60_000) {
  const insecure = new Agent({ connect: { rejectUnauthorized: false } });
  const until = Date.now() + timeoutMs;
  for (;;) {
    try {
      const res = await request(url, { dispatcher: insecure });
      await res.body.dump();
      if (res.statusCode === 200) break;
    } catch {}
    if (Date.now() > until) {
      await insecure.close();
      throw new Error(`${what} not healthy in ${timeoutMs} ms:\n${log().slice(-4000)}`);
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  await insecure.close();
}

export async function startCluster(options: ClusterOptions): Promise<Cluster> {
  const network = createPodNetwork();
  let cp: ControlPlane | undefined;
  let kubelet: Kubelet | undefined;
  try {
    cp = await startControlPlane({ address: network.hostAddress, serviceAccounts: true, aggregation: true });
    const plane = cp;
    const admin = plane.kubeconfig;
    const kc = new KubeConfig();
    kc.loadFromFile(admin);
    const kubectl: Cluster["kubectl"] = (args, opts = {}) =>
      new Promise((resolve, reject) => {
        const child = execFile(
          join(plane.bin, "kubectl"),
          ["--kubeconfig", opts.kubeconfig ?? admin, ...args],
          { encoding: "utf8", maxBuffer: 64 * 2 ** 20 },
          (err, stdout, stderr) => {
            if (err === null) resolve(stdout);
            else reject(Object.assign(new Error(`kubectl ${args.join(" ")}: ${stderr}`), { stdout, stderr }));
          },
        );
        child.stdin?.end(opts.input);
      });

    const kcmPort = await freePort();
    plane.spawnBinary("kube-controller-manager", [
      `--kubeconfig=${admin}`,
      `--authentication-kubeconfig=${admin}`,
      `--authorization-kubeconfig=${admin}`,
      "--bind-address=127.0.0.1",
      `--secure-port=${kcmPort}`,
      "--leader-elect=false",
      "--use-service-account-credentials=false",
      `--controllers=${[
        "deployment-controller",
        "replicaset-controller",
        "endpointslice-controller",
        "horizontal-pod-autoscaler-controller",
        "disruption-controller",
        "garbage-collector-controller",
        "namespace-controller",
        "serviceaccount-controller",
        "root-ca-certificate-publisher-controller",
        "node-lifecycle-controller",
        "clusterrole-aggregation-controller",
      ].join(",")}`,
      `--service-account-private-key-file=${join(plane.pki, "sa.key")}`,
      `--root-ca-file=${join(plane.pki, "ca.crt")}`,
      "--horizontal-pod-autoscaler-sync-period=2s",
      "--v=1",
    ]);
    await waitHealthy("kube-controller-manager", `https://127.0.0.1:${kcmPort}/healthz`, () =>
      plane.logOf("kube-controller-manager"),
    );
    const schedulerPort = await freePort();
    plane.spawnBinary("kube-scheduler", [
      `--kubeconfig=${admin}`,
      `--authentication-kubeconfig=${admin}`,
      `--authorization-kubeconfig=${admin}`,
      "--bind-address=127.0.0.1",
      `--secure-port=${schedulerPort}`,
      "--leader-elect=false",
      "--v=1",
    ]);
    await waitHealthy("kube-scheduler", `https://127.0.0.1:${schedulerPort}/healthz`, () =>
      plane.logOf("kube-scheduler"),
    );

    const kwokDir = join(plane.dir, "kwok");
    mkdirSync(kwokDir);
    const stages = join(plane.bin, "kwok-stages");
    plane.spawnBinary(
      "kwok",
      [
        `--kubeconfig=${admin}`,
        ...readdirSync(stages).map((f) => `--config=${join(stages, f)}`),
        `--config=${join(here, "kwok-stages.yaml")}`,
        "--manage-all-nodes=false",
        "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
        `--node-ip=${network.hostAddress}`,
        "--node-lease-duration-seconds=40",
      ],
      { KWOK_WORKDIR: kwokDir },
    );

    // Nodes: objects with their capacity; kwok adds conditions, addresses and node info, and keeps
    // their leases, so the node lifecycle controller lifts the not-ready taint.
    const core = kc.makeApiClient(CoreV1Api);
    const nodeCidrs = new Map<string, string>();
    const all = [
      ...options.gpuNodes.map((g) => ({ name: g.name, gpu: g })),
      ...options.cpuNodes.map((name) => ({ name, gpu: undefined })),
    ];
    for (const [i, { name, gpu }] of all.entries()) {
      const cidr = network.nodeCidr(i);
      nodeCidrs.set(name, cidr);
      const capacity: Record<string, string> = gpu
        ? { cpu: "64", memory: "512Gi", pods: "110", "nvidia.com/gpu": String(gpu.gpus) }
        : { cpu: "16", memory: "64Gi", pods: "110" };
      const node: V1Node = {
        metadata: {
          name,
          annotations: { "kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0" },
          labels: {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            ...(gpu ? { "nvidia.com/gpu.product": gpu.product } : {}),
          },
        },
        spec: {
          podCIDR: cidr,
          podCIDRs: [cidr],
          ...(gpu ? { taints: [{ key: "nvidia.com/gpu", value: "present", effect: "NoSchedule" }] } : {}),
        },
        status: { capacity, allocatable: capacity },
      };
      await core.createNode({ body: node });
    }
    const until = Date.now() + 60_000;
    for (;;) {
      const nodes = (await core.listNode()).items;
      const ready = nodes.filter(
        (n) =>
          n.status?.conditions?.some((c) => c.type === "Ready" && c.status === "True") &&
          !(n.spec?.taints ?? []).some((t) => t.key.startsWith("node.kubernetes.io/")),
      );
      if (ready.length === all.length) break;
      if (Date.now() > until) throw new Error(`nodes not ready:\n${plane.logOf("kwok").slice(-3000)}`);
      await new Promise((r) => setTimeout(r, 250));
    }

    const port = Number(new URL(plane.url).port);
    kubelet = await startKubelet({
      kc,
      network,
      nodes: nodeCidrs,
      dir: join(plane.dir, "pods"),
      bin: plane.bin,
      apiserver: { host: network.hostAddress, port },
    });
    const running = kubelet;
    const caData = readFileSync(plane.caFile).toString("base64");

    return {
      cp: plane,
      network,
      kubelet: running,
      kc,
      nodes: all.map((n) => n.name),
      kubectl,
      async serviceAccountKubeconfig(namespace, name) {
        const token = await core.createNamespacedServiceAccountToken({
          name,
          namespace,
          body: { spec: { audiences: [], expirationSeconds: 3600 } },
        });
        const file = join(plane.dir, `kubeconfig-${namespace}-${name}`);
        writeFileSync(
          file,
          [
            "apiVersion: v1",
            "kind: Config",
            "clusters:",
            `- name: test\n  cluster: {server: "${plane.url}", certificate-authority-data: ${caData}}`,
            "users:",
            `- name: ${name}\n  user: {token: "${token.status?.token}"}`,
            "contexts:",
            `- name: sa\n  context: {cluster: test, user: ${name}, namespace: ${namespace}}`,
            "current-context: sa",
            "",
          ].join("\n"),
        );
        return file;
      },
      logs: () =>
        ["kube-controller-manager", "kube-scheduler", "kwok"]
          .map((c) => `--- ${c}\n${plane.logOf(c).slice(-3000)}`)
          .join("\n"),
      async stop() {
        await running.stop();
        await plane.stop();
        network.destroy();
      },
    };
  } catch (err) {
    await kubelet?.stop();
    await cp?.stop();
    network.destroy();
    throw err;
  }
}
