/**
 * Runs a cluster add-on (prometheus-operator, Prometheus, prometheus-adapter, Flagger, KEDA) as a process
 * on this machine, the way the cluster's own components run in the harness, but with the one thing a pod
 * would get from the cluster and a host process does not: names of Services. deploy/ addresses Prometheus
 * as `prometheus-operated.monitoring.svc` (Flagger's MetricTemplates, KEDA's triggers, prometheus-adapter's
 * values); there is no cluster DNS here, so each process gets its own /etc/hosts (a private mount
 * namespace, the host's file untouched) that answers those names as cluster DNS would, with the address
 * the test serves them on. deploy/'s addresses thus stay as shipped.
 *
 * Needs root and util-linux (unshare). The process is killed at stop(); its output is kept for failure
 * messages.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

export interface HostProcess {
  readonly child: ChildProcess;
  /** The last 50,000 characters it printed. */
  output(): string;
  stop(): Promise<void>;
}

export interface HostProcessOptions {
  /** A scratch directory for its hosts file. */
  readonly dir: string;
  readonly name: string;
  readonly argv: readonly string[];
  /** Extra environment (added to this process's). */
  readonly env?: Readonly<Record<string, string>>;
  /** Service names -> address, as cluster DNS would answer them. */
  readonly hosts?: Readonly<Record<string, string>>;
}

/** Single-quotes a string for sh. */
const q = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;

export function startHostProcess(options: HostProcessOptions): HostProcess {
  const hostsFile = join(options.dir, `${options.name}.hosts`);
  const names = Object.entries(options.hosts ?? {}).map(([name, ip]) => `${ip} ${name}`);
  writeFileSync(hostsFile, `${readFileSync("/etc/hosts", "utf8")}\n${names.join("\n")}\n`);
  const script = `mount --bind ${q(hostsFile)} /etc/hosts && exec ${options.argv.map(q).join(" ")}`;
  const child = spawn("unshare", ["--mount", "--propagation", "private", "--", "sh", "-c", script], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, ...options.env },
  });
  let text = "";
  const keep = (d: Buffer) => {
    text = (text + d.toString()).slice(-50_000);
  };
  child.stdout?.on("data", keep);
  child.stderr?.on("data", keep);
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  return {
    child,
    output: () => text,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(timer);
    },
  };
}
