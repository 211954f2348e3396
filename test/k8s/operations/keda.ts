/**
 * KEDA (github.com/kedacore/keda/v2, built from its Go module by test/k8s/build.sh) for the operations-loops
 * tests: the operator (cmd/operator), which turns ScaledObjects into HPAs and scales to and from zero
 * itself, and its metrics API server (cmd/adapter), registered as the external metrics APIService that
 * the HPAs it makes read. Both run on the host, as KEDA's BUILD.md describes running it outside a cluster,
 * with the cluster's admin credentials (an add-on installed by the platform team), without the admission
 * webhooks (optional in KEDA) and without certificate rotation: the test makes the certificates they
 * share (the operator's gRPC metrics service and the adapter's client use the same CA, as the Helm chart's
 * kedaorg-certs Secret gives them). Names the Helm chart's Services would have are answered by each
 * process's hosts file (host-process.ts).
 */
import { execFileSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { freePort } from "../../helpers/free-port.js";
import type { Cluster } from "../cluster/cluster.js";
import { type HostProcess, startHostProcess } from "./host-process.js";

/** The operator's gRPC metrics service, by the name the adapter dials by default. */
const OPERATOR_SERVICE = "keda-operator.keda.svc.cluster.local";

function openssl(args: string[]) {
  execFileSync("openssl", args, { stdio: "ignore" });
}

/** ca.crt, tls.crt and tls.key in `dir`, the leaf valid for the operator's and the adapter's names. */
function makeCertificates(dir: string, address: string) {
  openssl([
    "req",
    "-x509",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-days",
    "2",
    "-subj",
    "/CN=kinfer-test-keda-ca",
    "-keyout",
    join(dir, "ca.key"),
    "-out",
    join(dir, "ca.crt"),
  ]);
  openssl([
    "req",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-subj",
    "/CN=keda",
    "-keyout",
    join(dir, "tls.key"),
    "-out",
    join(dir, "tls.csr"),
  ]);
  writeFileSync(
    join(dir, "san.ext"),
    `subjectAltName=DNS:${OPERATOR_SERVICE},DNS:keda-operator.keda.svc,DNS:keda-metrics-apiserver.keda.svc,DNS:localhost,IP:127.0.0.1,IP:${address}\n`,
  );
  openssl([
    "x509",
    "-req",
    "-in",
    join(dir, "tls.csr"),
    "-CA",
    join(dir, "ca.crt"),
    "-CAkey",
    join(dir, "ca.key"),
    "-CAcreateserial",
    "-days",
    "2",
    "-extfile",
    join(dir, "san.ext"),
    "-out",
    join(dir, "tls.crt"),
  ]);
}

/** Starts KEDA's operator and metrics server; resolves once the external metrics APIService is Available. */
export async function startKeda(
  cluster: Cluster,
  hosts: Readonly<Record<string, string>>,
): Promise<HostProcess[]> {
  const dir = join(cluster.cp.dir, "keda");
  const certs = join(dir, "certs");
  mkdirSync(certs, { recursive: true });
  const address = cluster.network.hostAddress;
  makeCertificates(certs, address);
  await cluster.kubectl(["create", "namespace", "keda"]);
  const env = {
    KUBECONFIG: cluster.cp.kubeconfig,
    WATCH_NAMESPACE: "",
    KEDA_CLUSTER_OBJECT_NAMESPACE: "keda",
    POD_NAMESPACE: "keda",
  };
  const grpcPort = await freePort();
  const operator = startHostProcess({
    dir,
    name: "keda-operator",
    argv: [
      join(cluster.cp.bin, "keda"),
      "--leader-elect=false",
      `--cert-dir=${certs}`,
      `--metrics-bind-address=127.0.0.1:${await freePort()}`,
      `--health-probe-bind-address=127.0.0.1:${await freePort()}`,
      `--metrics-service-bind-address=127.0.0.1:${grpcPort}`,
      "--enable-webhook-patching=false",
      "--enable-apiservice-patching=false",
      "--zap-log-level=info",
    ],
    env,
    hosts,
  });
  const port = await freePort();
  const adapter = startHostProcess({
    dir,
    name: "keda-adapter",
    argv: [
      join(cluster.cp.bin, "keda-adapter"),
      `--lister-kubeconfig=${cluster.cp.kubeconfig}`,
      `--authentication-kubeconfig=${cluster.cp.kubeconfig}`,
      `--authorization-kubeconfig=${cluster.cp.kubeconfig}`,
      `--bind-address=${address}`,
      `--secure-port=${port}`,
      `--port=${await freePort()}`,
      `--cert-dir=${certs}`,
      `--tls-cert-file=${join(certs, "tls.crt")}`,
      `--tls-private-key-file=${join(certs, "tls.key")}`,
      `--metrics-service-address=${OPERATOR_SERVICE}:${grpcPort}`,
    ],
    env,
    hosts: { ...hosts, [OPERATOR_SERVICE]: "127.0.0.1" },
  });
  await cluster.kubectl(["apply", "-f", "-"], {
    input: JSON.stringify({
      apiVersion: "v1",
      kind: "List",
      items: [
        {
          apiVersion: "v1",
          kind: "Service",
          metadata: { name: "keda-metrics-apiserver", namespace: "keda" },
          spec: { ports: [{ name: "https", port: 443, targetPort: 6443 }] },
        },
        {
          apiVersion: "discovery.k8s.io/v1",
          kind: "EndpointSlice",
          metadata: {
            name: "keda-metrics-apiserver-host",
            namespace: "keda",
            labels: {
              "kubernetes.io/service-name": "keda-metrics-apiserver",
              "endpointslice.kubernetes.io/managed-by": "kinfer-test-harness",
            },
          },
          addressType: "IPv4",
          ports: [{ name: "https", port, protocol: "TCP" }],
          endpoints: [{ addresses: [address], conditions: { ready: true } }],
        },
        {
          apiVersion: "apiregistration.k8s.io/v1",
          kind: "APIService",
          metadata: { name: "v1beta1.external.metrics.k8s.io" },
          spec: {
            group: "external.metrics.k8s.io",
            version: "v1beta1",
            groupPriorityMinimum: 100,
            versionPriority: 100,
            insecureSkipTLSVerify: true,
            service: { name: "keda-metrics-apiserver", namespace: "keda", port: 443 },
          },
        },
      ],
    }),
  });
  try {
    await cluster.kubectl([
      "wait",
      "--for=condition=Available",
      "apiservice/v1beta1.external.metrics.k8s.io",
      "--timeout=120s",
    ]);
  } catch (err) {
    await Promise.all([operator.stop(), adapter.stop()]);
    throw new Error(
      `${(err as Error).message}\n--- keda-operator\n${operator.output().slice(-3000)}\n--- keda-adapter\n${adapter.output().slice(-3000)}`,
    );
  }
  return [operator, adapter];
}
