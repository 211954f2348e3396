/**
 * Runs the `kinfer-sim` program as a child process (free ports), waits until it prints "ready", and stops
 * it (SIGTERM, then SIGKILL) afterwards. Load tests use it so that the simulator and the test's clients
 * run on separate cores.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { createInterface } from "node:readline";

const root = new URL("../..", import.meta.url).pathname;

export interface SimProcess {
  /** Replica URLs by model, in port order. */
  readonly urls: ReadonlyMap<string, readonly string[]>;
  stop(): Promise<void>;
}

/** Starts kinfer-sim with `args`; a fleet on free ports unless `fleet` is false (then args say where). */
export async function startSimProcess(
  args: readonly string[],
  timeoutMs = 20_000,
  fleet = true,
): Promise<SimProcess> {
  const child: ChildProcess = spawn(
    process.execPath,
    ["--import", "tsx", "sim/main.ts", ...(fleet ? ["--base-port", "0"] : []), ...args],
    {
      cwd: root,
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  let stderr = "";
  child.stderr?.on("data", (d: Buffer) => {
    stderr += d.toString();
  });
  const urls = new Map<string, string[]>();
  const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream });
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`kinfer-sim did not start: ${stderr}`)), timeoutMs);
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`kinfer-sim exited with ${code}: ${stderr}`));
    });
    lines.on("line", (line) => {
      const m = /^kinfer-sim: (\S+) at (\S+)$/.exec(line);
      if (m) urls.set(m[1] as string, [...(urls.get(m[1] as string) ?? []), m[2] as string]);
      if (line === "kinfer-sim: ready") {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  child.removeAllListeners("exit");
  return {
    urls,
    stop: () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null) return resolve();
        const kill = setTimeout(() => child.kill("SIGKILL"), 5000);
        child.once("exit", () => {
          clearTimeout(kill);
          resolve();
        });
        child.kill("SIGTERM");
      }),
  };
}
