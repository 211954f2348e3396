/**
 * prometheus-adapter (sigs.k8s.io/prometheus-adapter v0.12.0, built from its Go module by
 * test/k8s/build.sh) as the README's `helm install ... -f deploy/monitoring/prometheus-adapter-values.yaml`
 * runs it, for the operations-loops tests: the values' rules become the adapter's configuration as the
 * chart renders them (`rules.custom` -> `rules`, no default rules), its Prometheus is the values'
 * `prometheus.url` and `port`, and the relist interval is the chart's default (1m). It runs on the host,
 * on the pod network's host address, under its own ServiceAccount's token (prometheus-adapter.yaml), and is
 * registered as the custom metrics APIService; the apiserver's aggregator reaches it through the
 * EndpointSlice written here.
 */
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parse as parseYaml, stringify as stringifyYaml } from "yaml";
import { freePort } from "../../helpers/free-port.js";
import type { Cluster } from "../cluster/cluster.js";
import { type HostProcess, startHostProcess } from "./host-process.js";

const here = new URL(".", import.meta.url).pathname;
const root = new URL("../../..", import.meta.url).pathname;

interface AdapterValues {
  prometheus: { url: string; port: number };
  rules: { default: boolean; custom: unknown[] };
}

/** Starts the adapter and waits until the aggregator reports its APIServices Available. */
export async function startPrometheusAdapter(
  cluster: Cluster,
  hosts: Readonly<Record<string, string>>,
): Promise<HostProcess> {
  const dir = join(cluster.cp.dir, "prometheus-adapter");
  mkdirSync(join(dir, "certs"), { recursive: true });
  const values = parseYaml(
    readFileSync(join(root, "deploy/monitoring/prometheus-adapter-values.yaml"), "utf8"),
  ) as AdapterValues;
  if (values.rules.default !== false) throw new Error("the values turn the chart's default rules on");
  const config = join(dir, "config.yaml");
  writeFileSync(config, stringifyYaml({ rules: values.rules.custom }));

  await cluster.kubectl(["apply", "-f", join(here, "prometheus-adapter.yaml")]);
  const kubeconfig = await cluster.serviceAccountKubeconfig("monitoring", "prometheus-adapter");
  const port = await freePort();
  const adapter = startHostProcess({
    dir,
    name: "prometheus-adapter",
    argv: [
      join(cluster.cp.bin, "prometheus-adapter"),
      `--lister-kubeconfig=${kubeconfig}`,
      `--authentication-kubeconfig=${kubeconfig}`,
      `--authorization-kubeconfig=${kubeconfig}`,
      `--bind-address=${cluster.network.hostAddress}`,
      `--secure-port=${port}`,
      `--cert-dir=${join(dir, "certs")}`,
      `--config=${config}`,
      `--prometheus-url=${values.prometheus.url}:${values.prometheus.port}/`,
      "--metrics-relist-interval=1m",
      "--v=2",
    ],
    hosts,
  });
  await cluster.kubectl(["apply", "-f", "-"], {
    input: JSON.stringify({
      apiVersion: "discovery.k8s.io/v1",
      kind: "EndpointSlice",
      metadata: {
        name: "prometheus-adapter-host",
        namespace: "monitoring",
        labels: {
          "kubernetes.io/service-name": "prometheus-adapter",
          "endpointslice.kubernetes.io/managed-by": "kinfer-test-harness",
        },
      },
      addressType: "IPv4",
      ports: [{ name: "https", port, protocol: "TCP" }],
      endpoints: [{ addresses: [cluster.network.hostAddress], conditions: { ready: true } }],
    }),
  });
  try {
    for (const v of ["v1beta1", "v1beta2"])
      await cluster.kubectl([
        "wait",
        "--for=condition=Available",
        `apiservice/${v}.custom.metrics.k8s.io`,
        "--timeout=90s",
      ]);
  } catch (err) {
    await adapter.stop();
    throw new Error(`${(err as Error).message}\n${adapter.output().slice(-4000)}`);
  }
  return adapter;
}
