/**
 * The reference proxies of bench/gateway-overhead.ts, run next to kinfer's gateway in the same run:
 *
 * - nginx (Debian's package) as a plain streaming proxy: proxy_buffering off, HTTP/1.1 to the replicas
 *   with keep-alive (idle connections kept 4 s, under the replicas' 5 s), round-robin, no access log, one worker, run in the foreground with a config written
 *   to a temporary directory. A second listener speaks cleartext HTTP/2 for the open-streams phase.
 * - the seed article's Go gateway (gin + httputil.ReverseProxy, bench/reference/seed-gateway), built once
 *   into a cache outside the repository by bench/reference/build-seed-gateway.sh.
 * - the floor of a relay in Node (bench/reference/node-relay.ts): Node's http servers and undici's dispatch
 *   API relaying the replica's bytes as they are, or parsing each event and writing a chunk of its own
 *   (OpenAI SSE, or a gRPC message on its h2c listener).
 *
 * Either is skipped, with the reason, when it is not installed or does not build.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { nodeBundle } from "./node-bundle.js";

const root = new URL("../..", import.meta.url).pathname;

export interface ProxyProcess {
  readonly child: ChildProcess;
  /** HTTP/1.1 (and, for the seed gateway, also h2c). */
  readonly url: string;
  /** Cleartext HTTP/2 with prior knowledge. */
  readonly h2Url: string;
  readonly pid: number;
  /** Bytes allocated on the V8 heap so far (Node processes, from --trace-gc-nvp). */
  readonly allocated?: () => number;
  stop(): void;
}

/** A port free now (nginx cannot listen on port 0 and say which port it got). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

/** `cmd ARGS` on `cpu` (taskset) when `pin`. */
function pinned(cpu: number | undefined, cmd: string, args: string[]): [string, string[]] {
  return cpu === undefined ? [cmd, args] : ["taskset", ["-c", String(cpu), cmd, ...args]];
}

async function waitForPort(url: string, child: ChildProcess, log: () => string): Promise<void> {
  for (let i = 0; i < 100; i++) {
    if (child.exitCode !== null) throw new Error(`exited with ${child.exitCode}: ${log()}`);
    try {
      await fetch(url, { method: "HEAD" });
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  throw new Error(`not listening at ${url}: ${log()}`);
}

/** nginx, or the reason it cannot run here. */
export async function startNginx(
  replicas: readonly string[],
  cpu: number | undefined,
): Promise<ProxyProcess | string> {
  const nginx = ["/usr/sbin/nginx", "/usr/local/sbin/nginx"].find((p) => existsSync(p));
  if (nginx === undefined) return "nginx is not installed (apt-get install -y nginx)";
  const dir = mkdtempSync(join(tmpdir(), "kinfer-bench-nginx-"));
  for (const d of ["body", "proxy", "fastcgi", "uwsgi", "scgi"]) mkdirSync(join(dir, d));
  const [port, h2Port] = [await freePort(), await freePort()];
  const servers = replicas.map((r) => `    server ${new URL(r).host};`).join("\n");
  writeFileSync(
    join(dir, "nginx.conf"),
    `daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 19000;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 19000; }
http {
  access_log off;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  http2_max_concurrent_streams 1000;
  upstream replicas {
${servers}
    keepalive 1024;
    keepalive_timeout 4s;
  }
  server {
    listen 127.0.0.1:${port};
    listen 127.0.0.1:${h2Port} http2;
    location / {
      proxy_pass http://replicas;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_read_timeout 1h;
    }
  }
}
`,
  );
  const [cmd, args] = pinned(cpu, nginx, ["-p", dir, "-c", join(dir, "nginx.conf")]);
  const child = spawn(cmd, args, { stdio: ["ignore", "ignore", "pipe"] });
  let log = "";
  child.stderr?.on("data", (d) => {
    log += d;
  });
  const url = `http://127.0.0.1:${port}`;
  try {
    await waitForPort(url, child, () => log + readErrorLog(dir));
  } catch (err) {
    child.kill("SIGKILL");
    return `nginx did not start: ${(err as Error).message}`;
  }
  return {
    child,
    url,
    h2Url: `http://127.0.0.1:${h2Port}`,
    pid: child.pid as number,
    stop: () => child.kill("SIGTERM"),
  };
}

function readErrorLog(dir: string): string {
  try {
    return readFileSync(join(dir, "error.log"), "utf8");
  } catch {
    return "";
  }
}

/** The seed article's Go gateway, or the reason it cannot run here. */
export async function startSeedGateway(
  replicas: readonly string[],
  cpu: number | undefined,
): Promise<ProxyProcess | string> {
  let binary: string;
  try {
    binary = execFileSync(join(root, "bench/reference/build-seed-gateway.sh"), {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "pipe"],
    }).trim();
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    return `the seed gateway did not build: ${(e.stderr ?? e.message).trim().split("\n").slice(-3).join(" ")}`;
  }
  const [cmd, args] = pinned(cpu, binary, ["-listen", "127.0.0.1:0", "-model", "m", ...replicas]);
  const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "inherit"] });
  const url = await new Promise<string | undefined>((resolve) => {
    child.once("exit", () => resolve(undefined));
    createInterface({ input: child.stdout as NodeJS.ReadableStream }).on("line", (line) => {
      const m = /^seed-gateway: serving at (\S+)$/.exec(line);
      if (m !== null) resolve(m[1]);
    });
  });
  if (url === undefined) return "the seed gateway exited at start";
  return { child, url, h2Url: url, pid: child.pid as number, stop: () => child.kill("SIGTERM") };
}

/** bench/reference/node-relay.ts (`parse`: with --parse), compiled as kinfer's gateway is. */
export async function startNodeRelay(
  replicas: readonly string[],
  cpu: number | undefined,
  parse: boolean,
): Promise<ProxyProcess | string> {
  const script = nodeBundle("bench/reference/node-relay.ts", "node-relay");
  const [cmd, args] = pinned(cpu, process.execPath, [
    "--trace-gc-nvp",
    script,
    ...(parse ? ["--parse"] : []),
    ...replicas,
  ]);
  const child = spawn(cmd, args, { cwd: root, stdio: ["ignore", "pipe", "inherit"] });
  let allocated = 0;
  const urls = await new Promise<[string, string] | undefined>((resolve) => {
    child.once("exit", () => resolve(undefined));
    createInterface({ input: child.stdout as NodeJS.ReadableStream }).on("line", (line) => {
      const gc = / allocated=(\d+) /.exec(line);
      if (gc !== null) allocated += Number(gc[1]);
      const m = /^node-relay: serving at (\S+) h2c (\S+)$/.exec(line);
      if (m !== null) resolve([m[1] as string, m[2] as string]);
    });
  });
  if (urls === undefined) return "the Node relay exited at start";
  return {
    child,
    url: urls[0],
    h2Url: urls[1],
    pid: child.pid as number,
    allocated: () => allocated,
    stop: () => child.kill("SIGTERM"),
  };
}
