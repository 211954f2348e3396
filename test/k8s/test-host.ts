/**
 * A test host inside this machine: a network namespace joined to the host by a veth pair, with its own
 * addresses in 10.213.<n>.0/28 (the host end is .1). Kubernetes rejects loopback addresses in
 * EndpointSlices, so replicas that discovery must find run in here, at addresses that look like pod IPs.
 * Traffic to them never leaves the machine. Needs root and iproute2.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { createInterface } from "node:readline";

const root = new URL("../..", import.meta.url).pathname;

export interface TestHost {
  /** Addresses inside the namespace, one per replica. */
  readonly addresses: readonly string[];
  /** Starts `kinfer-sim` with one replica of `model` at `address`:`port`; resolves when it is ready. */
  startReplica(address: string, port: number, model: string): Promise<ChildProcess>;
  destroy(): Promise<void>;
}

const ip = (...args: string[]) => execFileSync("ip", args, { stdio: ["ignore", "ignore", "pipe"] });

export function createTestHost(count: number): TestHost {
  if (count < 1 || count > 13) throw new RangeError("1 to 13 addresses");
  const id = Math.floor(Math.random() * 250) + 1;
  const name = `kinfer-${process.pid}-${id}`;
  const hostEnd = `kh${process.pid % 100000}x${id}`.slice(0, 15);
  const nsEnd = `kn${process.pid % 100000}x${id}`.slice(0, 15);
  const prefix = `10.213.${id}`;
  ip("netns", "add", name);
  ip("link", "add", hostEnd, "type", "veth", "peer", "name", nsEnd);
  ip("link", "set", nsEnd, "netns", name);
  ip("addr", "add", `${prefix}.1/28`, "dev", hostEnd);
  ip("link", "set", hostEnd, "up");
  const addresses = Array.from({ length: count }, (_, i) => `${prefix}.${i + 2}`);
  for (const a of addresses) ip("netns", "exec", name, "ip", "addr", "add", `${a}/28`, "dev", nsEnd);
  ip("netns", "exec", name, "ip", "link", "set", nsEnd, "up");
  ip("netns", "exec", name, "ip", "link", "set", "lo", "up");
  const children: ChildProcess[] = [];

  return {
    addresses,
    startReplica(address, port, model) {
      const child = spawn(
        "ip",
        [
          "netns",
          "exec",
          name,
          process.execPath,
          "--import",
          "tsx",
          "sim/main.ts",
          "--host",
          address,
          "--base-port",
          String(port),
          "--model",
          model,
        ],
        { cwd: root, stdio: ["ignore", "pipe", "inherit"] },
      );
      children.push(child);
      return new Promise((resolve, reject) => {
        child.once("exit", (code) => reject(new Error(`kinfer-sim in ${name} exited with ${code}`)));
        createInterface({ input: child.stdout as NodeJS.ReadableStream }).on("line", (line) => {
          if (line === "kinfer-sim: ready") resolve(child);
        });
      });
    },
    async destroy() {
      await Promise.all(
        children.map(
          (c) =>
            new Promise<void>((resolve) => {
              if (c.exitCode !== null) return resolve();
              c.once("exit", () => resolve());
              c.kill("SIGTERM");
            }),
        ),
      );
      try {
        ip("link", "del", hostEnd);
      } catch {}
      try {
        ip("netns", "del", name);
      } catch {}
    },
  };
}
