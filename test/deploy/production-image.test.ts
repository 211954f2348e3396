/**
 * The production image's programs, run as a container runs them, with no container engine: the
 * Containerfile's final stage (/app with dist/, bin/, package.json and production dependencies only, node
 * at /usr/local/bin/node; test/k8s/cluster/images.ts) on a read-only root filesystem where /tmp, hence
 * TMPDIR, is read-only too, as user 65532 with no capabilities, from the directory / (test/k8s/cluster/
 * container.ts: a mount namespace and an overlay, needs root). kinfer-sim, kinfer-gateway (in front of
 * that simulator) and kinfer-scheduler (on a simulated cluster) must start and serve. The same sandbox
 * runs the gateway from source through tsx, as the image used to: that must fail, or this test could not
 * catch what it is for.
 */
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { freePort } from "../helpers/free-port.js";
import { type Container, type ContainerSpec, startContainer } from "../k8s/cluster/container.js";
import { kinferAppMounts, productionDependencies, requireBuild } from "../k8s/cluster/images.js";

const root = new URL("../..", import.meta.url).pathname;
const PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
let dir: string;
const running: Container[] = [];

beforeAll(() => {
  requireBuild();
  dir = mkdtempSync(join(tmpdir(), "kinfer-image-"));
}, 300_000);

afterAll(async () => {
  for (const c of running) c.process.kill("SIGKILL");
  await Promise.all(running.map((c) => c.exited));
  rmSync(dir, { recursive: true, force: true });
});

/** A container of the production image, hardened as deploy/'s Deployments run it. */
function imageContainer(
  name: string,
  argv: string[],
  extra: ContainerSpec["mounts"] = [],
  links: ContainerSpec["links"] = {},
): Container {
  const c = startContainer({
    dir: join(dir, name),
    mounts: [...kinferAppMounts(), ...extra],
    links,
    readOnlyRootFilesystem: true,
    user: { uid: 65532, gid: 65532 },
    noNewPrivileges: true,
    dropAllCapabilities: true,
    env: { PATH, HOME: "/" },
    workingDir: "/",
    argv,
  });
  running.push(c);
  return c;
}

async function until(what: string, c: Container, fn: () => Promise<boolean>, timeoutMs = 30_000) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    if (c.process.exitCode !== null) throw new Error(`${what}: exited ${c.process.exitCode}\n${c.output()}`);
    if (await fn().catch(() => false)) return;
    if (Date.now() > end) throw new Error(`${what}: not serving in ${timeoutMs} ms\n${c.output()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe("the production image, on a read-only root as user 65532", () => {
  let simUrl = "";

  it("holds production dependencies only: no TypeScript, no tsx", () => {
    const modules = productionDependencies();
    for (const dev of ["tsx", "typescript", "vitest", "@biomejs/biome", "esbuild"])
      expect(existsSync(join(modules, dev)), dev).toBe(false);
    expect(existsSync(join(modules, "@connectrpc/connect-node"))).toBe(true);
  });

  it("kinfer-sim starts and serves", async () => {
    const port = await freePort();
    const c = imageContainer("sim", [
      "/app/bin/kinfer-sim",
      "--host",
      "127.0.0.1",
      "--port",
      String(port),
      "m",
    ]);
    simUrl = `http://127.0.0.1:${port}`;
    await until("kinfer-sim", c, async () => (await fetch(`${simUrl}/health`)).ok);
  });

  it("kinfer-gateway starts with its config mounted read-only and streams from the simulator", async () => {
    const port = await freePort();
    const config = join(dir, "gateway.yaml");
    writeFileSync(
      config,
      JSON.stringify({
        listen: { host: "127.0.0.1", port },
        scrape: { intervalMs: 100 },
        models: [{ name: "m", versions: [{ name: "stable", replicas: [simUrl] }] }],
      }),
    );
    const c = imageContainer(
      "gateway",
      ["kinfer", "--config", "/etc/kinfer/gateway.yaml"],
      [{ kind: "bind", target: "/etc/kinfer/gateway.yaml", source: config, readOnly: true }],
      // The image's entrypoint: /usr/local/bin/kinfer links to the program (Containerfile).
      { "/usr/local/bin/kinfer": "/app/bin/kinfer-gateway" },
    );
    const url = `http://127.0.0.1:${port}`;
    await until("kinfer-gateway", c, async () => (await fetch(`${url}/readyz`)).ok);
    const res = await fetch(`${url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        model: "m",
        stream: true,
        max_tokens: 8,
        messages: [{ role: "user", content: "hi" }],
      }),
    });
    expect(res.status).toBe(200);
    expect(await res.text()).toMatch(/data: \[DONE\]/);
  });

  it("kinfer-scheduler starts and serves its extender and ops ports", async () => {
    const [port, opsPort] = [await freePort(), await freePort()];
    const c = imageContainer(
      "scheduler",
      [
        "/app/bin/kinfer-scheduler",
        `--port=${port}`,
        "--ops-host=127.0.0.1",
        `--ops-port=${opsPort}`,
        "--cluster=/etc/kinfer/cluster.yaml",
      ],
      [
        {
          kind: "bind",
          target: "/etc/kinfer/cluster.yaml",
          source: join(root, "deploy/local/cluster.yaml"),
          readOnly: true,
        },
      ],
    );
    await until("kinfer-scheduler", c, async () => (await fetch(`http://127.0.0.1:${opsPort}/healthz`)).ok);
    expect((await fetch(`http://127.0.0.1:${port}/healthz`)).ok).toBe(true);
  });

  it("the same sandbox stops the gateway run from source through tsx (the old image): the check can fail", async () => {
    /** The gateway from source through tsx, as the old image ran it, with /tmp (or TMPDIR) as given. */
    const fromSource = async (name: string, mounts: ContainerSpec["mounts"], tmpdir?: string) => {
      const port = await freePort();
      const c = startContainer({
        dir: join(dir, name),
        mounts,
        readOnlyRootFilesystem: true,
        user: { uid: 65532, gid: 65532 },
        noNewPrivileges: true,
        dropAllCapabilities: true,
        env: { PATH, HOME: "/", ...(tmpdir !== undefined ? { TMPDIR: tmpdir } : {}) },
        workingDir: root,
        argv: ["node", "--import", "tsx", "server/main.ts", "--port", String(port)],
      });
      running.push(c);
      return { c, url: `http://127.0.0.1:${port}` };
    };
    // Read-only /tmp: tsx cannot make its transform cache there, and the program dies at start.
    const readOnly = await fromSource("tsx-read-only", []);
    const exit = await Promise.race([
      readOnly.c.exited,
      new Promise<undefined>((r) => setTimeout(() => r(undefined), 30_000)),
    ]);
    expect(exit?.code, readOnly.c.output()).not.toBe(0);
    expect(readOnly.c.output()).toMatch(/mkdir '\/tmp\/tsx-65532'/);
    // The same with a writable TMPDIR starts: the read-only /tmp is what stopped it. (Not a tmpfs on /tmp
    // itself: a checkout under /tmp would vanish under it.)
    const writable = await fromSource("tsx-writable", [{ kind: "tmpfs", target: "/var/tmp" }], "/var/tmp");
    await until(
      "the gateway through tsx with a writable /tmp",
      writable.c,
      async () => (await fetch(`${writable.url}/readyz`)).ok,
    );
  });
});
