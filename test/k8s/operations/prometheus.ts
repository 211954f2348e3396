/**
 * Monitoring as deployed, in the cluster tests: prometheus-operator (built from its Go module,
 * test/k8s/build.sh) watches the apiserver and renders a Prometheus object with deploy/monitoring's
 * ServiceMonitors, PodMonitor and PrometheusRule into Prometheus configuration (the Secret
 * prometheus-<name>, key prometheus.yaml.gz) and rule files (ConfigMaps prometheus-<name>-rulefiles-<n>);
 * Prometheus (built from its Go module, test/k8s/prometheus: Debian's package has no Kubernetes service
 * discovery) runs with exactly that configuration, re-read whenever the operator rewrites it.
 * Its scrape targets come from Kubernetes service discovery against the test apiserver, with a token of the
 * ServiceAccount monitoring/prometheus (prometheus-rbac.yaml): what is scraped is what the monitors select.
 *
 * The Prometheus object asks for no pods (replicas 0: kwok nodes run only what the kubelet stand-in knows),
 * selects monitors and rules by kube-prometheus-stack's default label (release=kube-prometheus-stack, which
 * deploy/monitoring sets) and names the running Prometheus's version, so that the operator writes configuration
 * that version understands. Only the paths of the rule files differ from a pod's (rewritten to a local
 * directory) and $(SHARD) is expanded to 0, as prometheus-config-reloader does for the first shard;
 * nothing else in the configuration is touched.
 */
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { gunzipSync } from "node:zlib";
import { CoreV1Api } from "@kubernetes/client-node";
import { parse as parseYaml, stringify as stringifyYaml } from "yaml";
import { freePort } from "../../helpers/free-port.js";
import type { Cluster } from "../cluster/cluster.js";
import { type HostProcess, startHostProcess } from "./host-process.js";

const here = new URL(".", import.meta.url).pathname;
const NAME = "kinfer";
const NAMESPACE = "monitoring";
/** Where a pod of the operator's StatefulSet mounts the rule ConfigMaps. */
const POD_RULES_DIR = "/etc/prometheus/rules/";

export interface Sample {
  readonly metric: Record<string, string>;
  readonly value: [number, string];
}

export interface Alert {
  readonly labels: Record<string, string>;
  readonly state: "pending" | "firing";
  readonly activeAt: string;
}

export interface Monitoring {
  /** http://<host address>:9090, also what `prometheus-operated.monitoring.svc:9090` resolves to. */
  readonly url: string;
  /** The configuration Prometheus runs (as the operator rendered it, rule paths rewritten). */
  config(): { scrape_configs?: { job_name: string }[]; rule_files?: string[] };
  /** An instant query; throws on a PromQL error. */
  query(expr: string): Promise<Sample[]>;
  /** Scrape targets (active). */
  targets(): Promise<
    { labels: Record<string, string>; health: string; lastError: string; scrapePool: string }[]
  >;
  /** Alerts pending or firing now. */
  alerts(): Promise<Alert[]>;
  /** How many times the operator's configuration was (re)loaded. */
  readonly reloads: number;
  logs(): string;
  stop(): Promise<void>;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** prometheus --version: "prometheus, version 3.5.0 (branch: HEAD, ...)" -> v3.5.0. */
function prometheusVersion(out: string): string {
  const v = /version (\d+\.\d+\.\d+)/.exec(out)?.[1];
  if (v === undefined) throw new Error(`cannot read Prometheus's version from: ${out}`);
  return `v${v}`;
}

export async function startMonitoring(cluster: Cluster): Promise<Monitoring> {
  const binary = join(cluster.cp.bin, "prometheus");
  const versionOutput = execFileSync(binary, ["--version"], { encoding: "utf8" });
  const dir = join(cluster.cp.dir, "monitoring");
  const rulesDir = join(dir, "rules");
  mkdirSync(rulesDir, { recursive: true });
  const core = cluster.kc.makeApiClient(CoreV1Api);
  const processes: HostProcess[] = [];
  const address = cluster.network.hostAddress;
  const url = `http://${address}:9090`;

  await cluster.kubectl(["apply", "-f", join(here, "prometheus-rbac.yaml")]);
  const token = await core.createNamespacedServiceAccountToken({
    name: "prometheus",
    namespace: NAMESPACE,
    body: { spec: { audiences: [], expirationSeconds: 3 * 3600 } },
  });
  const tokenFile = join(dir, "token");
  writeFileSync(tokenFile, token.status?.token ?? "", { mode: 0o600 });

  // The operator: the cluster's admin credentials, as an operator installed by a platform team has its own.
  const operator = startHostProcess({
    dir,
    name: "prometheus-operator",
    argv: [
      join(cluster.cp.bin, "prometheus-operator"),
      `--web.listen-address=127.0.0.1:${await freePort()}`,
      `--namespaces=${NAMESPACE}`,
      "--log-level=info",
    ],
    env: { KUBECONFIG: cluster.cp.kubeconfig },
  });
  processes.push(operator);

  const prometheusObject = {
    apiVersion: "monitoring.coreos.com/v1",
    kind: "Prometheus",
    metadata: { name: NAME, namespace: NAMESPACE },
    spec: {
      replicas: 0,
      version: prometheusVersion(versionOutput),
      serviceAccountName: "prometheus",
      serviceDiscoveryRole: "EndpointSlice",
      // No $(POD_NAME) external label: there is no pod to name.
      replicaExternalLabelName: "",
      prometheusExternalLabelName: "",
      serviceMonitorSelector: { matchLabels: { release: "kube-prometheus-stack" } },
      serviceMonitorNamespaceSelector: {},
      podMonitorSelector: { matchLabels: { release: "kube-prometheus-stack" } },
      podMonitorNamespaceSelector: {},
      ruleSelector: { matchLabels: { release: "kube-prometheus-stack" } },
      ruleNamespaceSelector: {},
      // kube-prometheus-stack's defaults are 30s; the alert tests need rules evaluated more often.
      scrapeInterval: "15s",
      evaluationInterval: "5s",
      apiserverConfig: {
        host: cluster.cp.url,
        authorization: { type: "Bearer", credentialsFile: tokenFile },
        tlsConfig: { caFile: cluster.cp.caFile },
      },
    },
  };
  await cluster.kubectl(["apply", "-f", "-"], { input: JSON.stringify(prometheusObject) });

  let rendered: { scrape_configs?: { job_name: string }[]; rule_files?: string[] } = {};
  let lastHash = "";
  let reloads = 0;
  const configFile = join(dir, "prometheus.yaml");

  /** Writes what the operator rendered, if it changed; true when it did. */
  const sync = async (): Promise<boolean> => {
    const secret = await core.readNamespacedSecret({ name: `prometheus-${NAME}`, namespace: NAMESPACE });
    const gz = secret.data?.["prometheus.yaml.gz"];
    if (gz === undefined) return false;
    const maps = (
      await core.listNamespacedConfigMap({
        namespace: NAMESPACE,
        labelSelector: `prometheus-name=${NAME}`,
      })
    ).items.filter((m) => m.metadata?.name?.startsWith(`prometheus-${NAME}-rulefiles-`));
    const hash = createHash("sha256").update(gz);
    for (const m of maps) hash.update(JSON.stringify(m.data ?? {}));
    const digest = hash.digest("hex");
    if (digest === lastHash) return false;
    // What the operator's config-reloader sidecar does in the pod: expand $(VAR) from its environment,
    // where the StatefulSet of shard 0 sets SHARD=0 (the generated relabelings keep that shard's targets).
    const text = gunzipSync(Buffer.from(gz, "base64")).toString().replaceAll("$(SHARD)", "0");
    const config = parseYaml(text) as typeof rendered;
    config.rule_files = (config.rule_files ?? []).map((f) =>
      f.startsWith(POD_RULES_DIR) ? join(rulesDir, f.slice(POD_RULES_DIR.length)) : f,
    );
    rmSync(rulesDir, { recursive: true, force: true });
    for (const m of maps) {
      const mapDir = join(rulesDir, m.metadata?.name as string);
      mkdirSync(mapDir, { recursive: true });
      for (const [key, value] of Object.entries(m.data ?? {})) writeFileSync(join(mapDir, key), value);
    }
    writeFileSync(configFile, stringifyYaml(config));
    rendered = config;
    lastHash = digest;
    return true;
  };

  /** Stops what was started, then fails: a failed start leaves no process behind. */
  const fail = async (message: string): Promise<never> => {
    await Promise.all(processes.map((p) => p.stop()));
    throw new Error(message);
  };
  const until = Date.now() + 120_000;
  while (!(await sync().catch(() => false))) {
    if (Date.now() > until)
      await fail(
        `prometheus-operator rendered no configuration in 120 s:\n${operator.output().slice(-4000)}`,
      );
    await sleep(500);
  }

  const prometheus = startHostProcess({
    dir,
    name: "prometheus",
    argv: [
      binary,
      `--config.file=${configFile}`,
      `--storage.tsdb.path=${join(dir, "data")}`,
      `--web.listen-address=${address}:9090`,
      "--web.enable-lifecycle",
      "--log.level=info",
    ],
  });
  processes.push(prometheus);
  const readyBy = Date.now() + 60_000;
  for (;;) {
    const ok = await fetch(`${url}/-/ready`)
      .then((r) => r.ok)
      .catch(() => false);
    if (ok) break;
    if (Date.now() > readyBy || prometheus.child.exitCode !== null)
      await fail(`Prometheus not ready:\n${prometheus.output().slice(-4000)}`);
    await sleep(250);
  }

  // The operator rewrites the configuration when monitors or rules change: reload, as its config-reloader
  // sidecar does in a pod.
  let watching = true;
  const watcher = (async () => {
    while (watching) {
      await sleep(1000);
      if (!watching) break;
      const changed = await sync().catch(() => false);
      if (changed) {
        const res = await fetch(`${url}/-/reload`, { method: "POST" }).catch(() => undefined);
        await res?.body?.cancel();
        reloads++;
      }
    }
  })();

  const api = async <T>(path: string): Promise<T> => {
    const res = await fetch(`${url}${path}`);
    const body = (await res.json()) as { status: string; error?: string; data: T };
    if (body.status !== "success") throw new Error(`${path}: ${body.error}`);
    return body.data;
  };

  return {
    url,
    config: () => rendered,
    query: async (expr) =>
      (await api<{ result: Sample[] }>(`/api/v1/query?${new URLSearchParams({ query: expr })}`)).result,
    targets: async () =>
      (
        await api<{
          activeTargets: {
            labels: Record<string, string>;
            health: string;
            lastError: string;
            scrapePool: string;
          }[];
        }>("/api/v1/targets?state=active")
      ).activeTargets,
    alerts: async () => (await api<{ alerts: Alert[] }>("/api/v1/alerts")).alerts,
    get reloads() {
      return reloads;
    },
    logs: () =>
      `--- prometheus-operator\n${operator.output().slice(-3000)}\n--- prometheus\n${prometheus.output().slice(-3000)}\n--- config\n${readFileSync(configFile, "utf8").slice(0, 3000)}`,
    async stop() {
      watching = false;
      await watcher;
      await Promise.all(processes.map((p) => p.stop()));
    },
  };
}
