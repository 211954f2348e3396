/**
 * A real Kubernetes control plane for tests: etcd and kube-apiserver (and, on request, kube-scheduler)
 * built from Go modules by test/k8s/build.sh, started on 127.0.0.1 (or the address given) with generated
 * certificates and a static admin token, and torn down completely. Nodes are plain API objects with no
 * kubelet, as in Kubernetes' own scheduler performance tests. The apiserver can be stopped and started
 * again on the same port and data, to test clients through an apiserver restart.
 *
 * By default pods need no ServiceAccount (no controller-manager creates them); the full cluster of
 * test/k8s/cluster/cluster.ts turns ServiceAccounts on and serves on a routable address, so that pods
 * reach it with their own tokens.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Agent, request } from "undici";
import { freePort } from "../helpers/free-port.js";

const root = new URL("../..", import.meta.url).pathname;

/** The directory of the built binaries (builds them the first time, which takes minutes). */
export function controlPlaneBinaries(): string {
  if (process.env.KINFER_K8S_BIN) return process.env.KINFER_K8S_BIN;
  return execFileSync(join(root, "test/k8s/build.sh"), {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "inherit"],
  }).trim();
}

function openssl(args: string[]) {
  execFileSync("openssl", args, { stdio: "ignore" });
}

export interface ControlPlaneOptions {
  /**
   * The address the apiserver serves and advertises (its certificate names it too). Default 127.0.0.1;
   * a cluster whose pods call the apiserver needs a routable one (the apiserver refuses to advertise
   * loopback in the `kubernetes` Service's endpoints).
   */
  address?: string;
  /**
   * The ServiceAccount admission plugin on: pods get their ServiceAccount's token volume, and are refused
   * when it does not exist (a controller-manager must create `default`). Default false.
   */
  serviceAccounts?: boolean;
  /**
   * The aggregation layer's front proxy (requestheader CA and client certificate, aggregator routing),
   * as every real cluster has: components that delegate authentication (kube-scheduler, metrics
   * adapters) read its CA from kube-system/extension-apiserver-authentication. Default false.
   */
  aggregation?: boolean;
}

export interface ControlPlane {
  /** https://<address>:<port> */
  readonly url: string;
  readonly token: string;
  /** A kubeconfig file for this cluster (admin). */
  readonly kubeconfig: string;
  /** PEM of the CA that signed the apiserver's certificate. */
  readonly caFile: string;
  readonly dir: string;
  /** The certificates and keys: ca.crt, ca.key, sa.key (the ServiceAccount token signing key), sa.pub. */
  readonly pki: string;
  readonly bin: string;
  /** Stops the apiserver (etcd keeps the data). */
  stopApiserver(): Promise<void>;
  /** Starts it again on the same port. */
  startApiserver(): Promise<void>;
  /** Runs a process from the control plane's bin directory, killed at stop(). */
  spawnBinary(name: string, args: string[], env?: Record<string, string>): ChildProcess;
  /** The last 20,000 characters a process started by spawnBinary printed. */
  logOf(name: string): string;
  stop(): Promise<void>;
}

function kill(child: ChildProcess | undefined): Promise<void> {
  if (child === undefined || child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
    child.once("exit", () => {
      clearTimeout(timer);
      resolve();
    });
    child.kill("SIGTERM");
  });
}

async function waitFor(
  what: string,
  check: () => Promise<boolean>,
  timeoutMs: number,
  proc?: ChildProcess,
  log?: () => string,
) {
  const until = Date.now() + timeoutMs;
  for (;;) {
    if (proc !== undefined && proc.exitCode !== null)
      throw new Error(`${what} exited with ${proc.exitCode}:\n${log?.() ?? ""}`);
    if (await check().catch(() => false)) return;
    if (Date.now() > until) throw new Error(`${what} not ready in ${timeoutMs} ms:\n${log?.() ?? ""}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

export async function startControlPlane(options: ControlPlaneOptions = {}): Promise<ControlPlane> {
  const address = options.address ?? "127.0.0.1";
  const bin = controlPlaneBinaries();
  const dir = mkdtempSync(join(tmpdir(), "kinfer-k8s-"));
  const pki = join(dir, "pki");
  mkdirSync(pki);
  // CA, apiserver serving certificate (127.0.0.1 and localhost), service-account signing key.
  openssl([
    "req",
    "-x509",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-days",
    "2",
    "-subj",
    "/CN=kinfer-test-ca",
    "-keyout",
    join(pki, "ca.key"),
    "-out",
    join(pki, "ca.crt"),
  ]);
  openssl([
    "req",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-subj",
    "/CN=kube-apiserver",
    "-keyout",
    join(pki, "apiserver.key"),
    "-out",
    join(pki, "apiserver.csr"),
  ]);
  writeFileSync(
    join(pki, "san.ext"),
    `subjectAltName=IP:127.0.0.1,IP:${address},DNS:localhost,DNS:kubernetes.default.svc\n`,
  );
  openssl([
    "x509",
    "-req",
    "-in",
    join(pki, "apiserver.csr"),
    "-CA",
    join(pki, "ca.crt"),
    "-CAkey",
    join(pki, "ca.key"),
    "-CAcreateserial",
    "-days",
    "2",
    "-extfile",
    join(pki, "san.ext"),
    "-out",
    join(pki, "apiserver.crt"),
  ]);
  if (options.aggregation) {
    openssl([
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-days",
      "2",
      "-subj",
      "/CN=kinfer-test-front-proxy-ca",
      "-keyout",
      join(pki, "front-proxy-ca.key"),
      "-out",
      join(pki, "front-proxy-ca.crt"),
    ]);
    openssl([
      "req",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-subj",
      "/CN=front-proxy-client",
      "-keyout",
      join(pki, "front-proxy-client.key"),
      "-out",
      join(pki, "front-proxy-client.csr"),
    ]);
    openssl([
      "x509",
      "-req",
      "-in",
      join(pki, "front-proxy-client.csr"),
      "-CA",
      join(pki, "front-proxy-ca.crt"),
      "-CAkey",
      join(pki, "front-proxy-ca.key"),
      "-CAcreateserial",
      "-days",
      "2",
      "-out",
      join(pki, "front-proxy-client.crt"),
    ]);
  }
  openssl(["genrsa", "-out", join(pki, "sa.key"), "2048"]);
  openssl(["rsa", "-in", join(pki, "sa.key"), "-pubout", "-out", join(pki, "sa.pub")]);
  const token = `kinfer-test-${Math.random().toString(36).slice(2)}`;
  writeFileSync(join(pki, "tokens.csv"), `${token},admin,admin,system:masters\n`);

  const children: ChildProcess[] = [];
  const logs = new Map<string, string>();
  const spawnBinary = (name: string, args: string[], env?: Record<string, string>) => {
    const child = spawn(join(bin, name), args, {
      stdio: ["ignore", "pipe", "pipe"],
      ...(env !== undefined ? { env: { ...process.env, ...env } } : {}),
    });
    let text = "";
    const keep = (d: Buffer) => {
      text = (text + d.toString()).slice(-20_000);
      logs.set(name, text);
    };
    child.stdout?.on("data", keep);
    child.stderr?.on("data", keep);
    children.push(child);
    return child;
  };

  const [etcdPort, peerPort, apiPort] = [await freePort(), await freePort(), await freePort()];
  const etcd = spawnBinary("etcd", [
    "--data-dir",
    join(dir, "etcd"),
    "--listen-client-urls",
    `http://127.0.0.1:${etcdPort}`,
    "--advertise-client-urls",
    `http://127.0.0.1:${etcdPort}`,
    "--listen-peer-urls",
    `http://127.0.0.1:${peerPort}`,
    "--initial-advertise-peer-urls",
    `http://127.0.0.1:${peerPort}`,
    "--initial-cluster",
    `default=http://127.0.0.1:${peerPort}`,
    "--unsafe-no-fsync",
    "--log-level",
    "warn",
  ]);
  await waitFor(
    "etcd",
    async () => (await fetch(`http://127.0.0.1:${etcdPort}/health`)).ok,
    30_000,
    etcd,
    () => logs.get("etcd") ?? "",
  );

  const url = `https://${address}:${apiPort}`;
  const caFile = join(pki, "ca.crt");
  const agent = new Agent({ connect: { ca: execFileSync("cat", [caFile], { encoding: "utf8" }) } });
  let apiserver: ChildProcess | undefined;
  const startApiserver = async () => {
    apiserver = spawnBinary("kube-apiserver", [
      `--etcd-servers=http://127.0.0.1:${etcdPort}`,
      `--bind-address=${address}`,
      `--advertise-address=${address}`,
      `--secure-port=${apiPort}`,
      `--tls-cert-file=${join(pki, "apiserver.crt")}`,
      `--tls-private-key-file=${join(pki, "apiserver.key")}`,
      `--client-ca-file=${caFile}`,
      `--token-auth-file=${join(pki, "tokens.csv")}`,
      "--service-account-issuer=https://kubernetes.default.svc",
      `--service-account-key-file=${join(pki, "sa.pub")}`,
      `--service-account-signing-key-file=${join(pki, "sa.key")}`,
      "--service-cluster-ip-range=10.96.0.0/16",
      "--authorization-mode=RBAC",
      // Without a controller-manager nothing creates the default ServiceAccount: pods then need none.
      ...(options.serviceAccounts ? [] : ["--disable-admission-plugins=ServiceAccount"]),
      `--cert-dir=${join(dir, "apiserver-certs")}`,
      ...(options.aggregation
        ? [
            `--requestheader-client-ca-file=${join(pki, "front-proxy-ca.crt")}`,
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            `--proxy-client-cert-file=${join(pki, "front-proxy-client.crt")}`,
            `--proxy-client-key-file=${join(pki, "front-proxy-client.key")}`,
            "--enable-aggregator-routing=true",
          ]
        : []),
      "--v=1",
    ]);
    await waitFor(
      "kube-apiserver",
      async () => {
        const res = await request(`${url}/readyz`, {
          dispatcher: agent,
          headers: { authorization: `Bearer ${token}` },
        });
        await res.body.dump();
        return res.statusCode === 200;
      },
      90_000,
      apiserver,
      () => logs.get("kube-apiserver") ?? "",
    );
  };
  await startApiserver();

  const kubeconfig = join(dir, "kubeconfig");
  writeFileSync(
    kubeconfig,
    [
      "apiVersion: v1",
      "kind: Config",
      "clusters:",
      "- name: test",
      "  cluster:",
      `    server: ${url}`,
      `    certificate-authority: ${caFile}`,
      "users:",
      "- name: admin",
      "  user:",
      `    token: ${token}`,
      "contexts:",
      "- name: test",
      "  context: {cluster: test, user: admin}",
      "current-context: test",
      "",
    ].join("\n"),
  );

  return {
    url,
    token,
    kubeconfig,
    caFile,
    dir,
    pki,
    bin,
    logOf: (name) => logs.get(name) ?? "",
    stopApiserver: () => kill(apiserver),
    startApiserver,
    spawnBinary,
    async stop() {
      await Promise.all(children.map(kill));
      await agent.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
