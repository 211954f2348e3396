/**
 * The gateway as its own process (bin/kinfer-gateway, as a cluster runs it), with a config written to a
 * temporary file: for tests about the program itself (signals, config reload, its memory) rather than the
 * library. Replicas are whatever the config lists (usually simulated ones in the test's process).
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { stringify } from "yaml";

const root = new URL("../..", import.meta.url).pathname;

export interface GatewayProcess {
  readonly url: string;
  /** The admin API's URL, when the config enables it. */
  readonly adminUrl: string | undefined;
  readonly pid: number;
  readonly child: ChildProcess;
  /** The config file (rewrite it to test reloads). */
  readonly configFile: string;
  /** Everything the process printed so far (stdout and stderr). */
  output(): string;
  /** Resident memory of the process, in bytes (Linux /proc). */
  rssBytes(): number;
  /** SIGTERM; resolves with the exit code once it exited (SIGKILL after `timeoutMs`). */
  stop(timeoutMs?: number): Promise<number | null>;
}

export async function startGatewayProcess(config: Record<string, unknown>): Promise<GatewayProcess> {
  const dir = mkdtempSync(join(tmpdir(), "kinfer-gateway-"));
  const configFile = join(dir, "gateway.yaml");
  writeFileSync(configFile, stringify({ listen: { host: "127.0.0.1", port: 0 }, ...config }));
  const child = spawn(`${root}bin/kinfer-gateway`, ["--config", configFile], {
    cwd: root,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  child.stderr?.on("data", (d) => {
    output += d;
  });
  let adminUrl: string | undefined;
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`kinfer-gateway did not start:\n${output}`)), 30_000);
    child.once("exit", (code) => reject(new Error(`kinfer-gateway exited with ${code}:\n${output}`)));
    let serving: string | undefined;
    createInterface({ input: child.stdout as NodeJS.ReadableStream }).on("line", (line) => {
      output += `${line}\n`;
      serving ??= /^kinfer-gateway: serving .* at (\S+)$/.exec(line)?.[1];
      adminUrl ??= /^ {2}admin: +(\S+)$/.exec(line)?.[1];
      // The banner's last line names the metrics (and the admin API after it, when there is one).
      if (
        serving !== undefined &&
        (/^ {2}admin: /.test(line) || (/^ {2}metrics: /.test(line) && !("admin" in config)))
      ) {
        clearTimeout(timer);
        resolve(serving);
      }
    });
  });
  child.removeAllListeners("exit");
  return {
    url,
    adminUrl,
    pid: child.pid as number,
    child,
    configFile,
    output: () => output,
    rssBytes() {
      const status = readFileSync(`/proc/${child.pid}/status`, "utf8");
      return Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? 0) * 1024;
    },
    stop(timeoutMs = 10_000) {
      return new Promise((resolve) => {
        const done = (code: number | null) => {
          clearTimeout(kill);
          rmSync(dir, { recursive: true, force: true });
          resolve(code);
        };
        if (child.exitCode !== null) return done(child.exitCode);
        const kill = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
        child.once("exit", (code) => done(code));
        child.kill("SIGTERM");
      });
    },
  };
}
