/**
 * The images deploy/ names, as the cluster tests run them without a container engine: each image
 * reference maps to the files that image would hold, placed at the same paths in the container
 * (container.ts), and to its entrypoint and user.
 *
 * - ghcr.io/kinfer/gateway and ghcr.io/kinfer/scheduler are the Containerfile's final stage: /app holds
 *   dist/ (the production build, `npm run build`), bin/, package.json and node_modules with the production
 *   dependencies only (`npm ci --omit=dev`, made once per lockfile in ~/.cache/kinfer), node is
 *   /usr/local/bin/node as in the node image, /usr/local/bin/kinfer links to the program, the user is
 *   65532. Their tag must be package.json's version: the build under test is the one deploy/ names.
 * - registry.k8s.io/kube-scheduler is the kube-scheduler built from the pinned Go module; the tag must
 *   be that version (the `images:` pin in deploy/base/kustomization.yaml is what runs).
 * - vllm/vllm-openai is the only stand-in: `vllm serve` runs kinfer-sim from the same /app with vLLM's
 *   command line (vllm-shim.sh).
 * Any other image fails the pod: nothing runs that the tests do not know.
 */
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import type { ContainerMount } from "./container.js";

const root = new URL("../../..", import.meta.url).pathname;

export interface ImageContent {
  /** Files of the image, bound into the container's root (read-only). */
  readonly mounts: readonly ContainerMount[];
  readonly links: Readonly<Record<string, string>>;
  readonly entrypoint: readonly string[];
  readonly cmd: readonly string[];
  /** The image's USER; root when unset. */
  readonly user?: { readonly uid: number; readonly gid: number };
  readonly workingDir: string;
  readonly path: string;
}

const PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/**
 * Fails unless dist/ holds a build at least as new as every source file it is built from: the tests run
 * the production build and must not run a stale one. `npm test` builds first (`npm run build`, which
 * stamps dist/.tsbuildinfo: tsc's incremental build leaves it alone when no file's content changed).
 */
export function requireBuild(): void {
  const info = join(root, "dist/.tsbuildinfo");
  if (!existsSync(info)) throw new Error("dist/ is missing: run `npm run build` first (npm test does)");
  const built = statSync(info).mtimeMs;
  const newest = (dir: string): number =>
    readdirSync(dir, { withFileTypes: true }).reduce((max, e) => {
      const path = join(dir, e.name);
      if (e.isDirectory()) return Math.max(max, newest(path));
      return e.name.endsWith(".ts") ? Math.max(max, statSync(path).mtimeMs) : max;
    }, 0);
  for (const dir of ["common", "server", "scheduler", "sim", "gen"]) {
    if (newest(join(root, dir)) > built)
      throw new Error(`dist/ is older than ${dir}/: run \`npm run build\` (npm test does)`);
  }
}

/**
 * node_modules with the production dependencies only, as the Containerfile's `deps` stage makes it
 * (`npm ci --omit=dev` on package.json, the lockfile, sdk/package.json and patches/), cached by their
 * hash. The first call takes some seconds (npm's cache already holds the packages after `npm ci`).
 */
export function productionDependencies(): string {
  const inputs = ["package.json", "package-lock.json", "sdk/package.json"];
  const patches = readdirSync(join(root, "patches")).map((f) => `patches/${f}`);
  const hash = createHash("sha256");
  for (const f of [...inputs, ...patches].sort()) hash.update(f).update(readFileSync(join(root, f)));
  const cache = process.env.KINFER_K8S_CACHE ?? join(homedir(), ".cache/kinfer");
  const dir = join(cache, `prod-deps-${hash.digest("hex").slice(0, 12)}`);
  if (existsSync(join(dir, "node_modules"))) return join(dir, "node_modules");
  const tmp = `${dir}.tmp-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(join(tmp, "sdk"), { recursive: true });
  mkdirSync(join(tmp, "patches"));
  for (const f of [...inputs, ...patches]) execFileSync("cp", [join(root, f), join(tmp, f)]);
  execFileSync("npm", ["ci", "--omit=dev", "--no-audit", "--no-fund", "--prefer-offline"], {
    cwd: tmp,
    stdio: ["ignore", "ignore", "pipe"],
  });
  try {
    renameSync(tmp, dir);
  } catch {
    // Another test process made it first.
    rmSync(tmp, { recursive: true, force: true });
  }
  return join(dir, "node_modules");
}

/** The Containerfile's final stage: /app as it holds it, and node where the node image has it. */
export function kinferAppMounts(): ContainerMount[] {
  return [
    { kind: "bind", target: "/app/package.json", source: join(root, "package.json"), readOnly: true },
    { kind: "bind", target: "/app/bin", source: join(root, "bin"), readOnly: true },
    { kind: "bind", target: "/app/dist", source: join(root, "dist"), readOnly: true },
    { kind: "bind", target: "/app/node_modules", source: productionDependencies(), readOnly: true },
    { kind: "bind", target: "/usr/local/bin/node", source: process.execPath, readOnly: true },
  ];
}

const version = (): string =>
  (JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as { version: string }).version;

/** The Kubernetes version the control plane is built at (test/k8s/control-plane/go.mod). */
function kubernetesVersion(): string {
  const mod = readFileSync(join(root, "test/k8s/control-plane/go.mod"), "utf8");
  const v = /k8s\.io\/kubernetes (v\S+)/.exec(mod)?.[1];
  if (v === undefined) throw new Error("test/k8s/control-plane/go.mod pins no k8s.io/kubernetes");
  return v;
}

/** What runs for `image`; throws for an image the tests do not know or a tag they do not build. */
export function resolveImage(image: string, bin: string): ImageContent {
  const at = image.lastIndexOf(":");
  const [name, tag] =
    at > image.lastIndexOf("/") ? [image.slice(0, at), image.slice(at + 1)] : [image, "latest"];
  const kinfer = (program: string): ImageContent => {
    if (tag !== version())
      throw new Error(`${image}: the tests run this repository's build, version ${version()}, not ${tag}`);
    return {
      mounts: kinferAppMounts(),
      links: { "/usr/local/bin/kinfer": `/app/bin/${program}` },
      entrypoint: ["kinfer"],
      cmd: [],
      user: { uid: 65532, gid: 65532 },
      workingDir: "/app",
      path: PATH,
    };
  };
  switch (name) {
    case "ghcr.io/kinfer/gateway":
      return kinfer("kinfer-gateway");
    case "ghcr.io/kinfer/scheduler":
      return kinfer("kinfer-scheduler");
    case "registry.k8s.io/kube-scheduler": {
      const built = kubernetesVersion();
      if (tag !== built) throw new Error(`${image}: the tests build kube-scheduler ${built}, not ${tag}`);
      return {
        mounts: [
          {
            kind: "bind",
            target: "/usr/local/bin/kube-scheduler",
            source: join(bin, "kube-scheduler"),
            readOnly: true,
          },
        ],
        links: {},
        entrypoint: ["/usr/local/bin/kube-scheduler"],
        cmd: [],
        workingDir: "/",
        path: PATH,
      };
    }
    case "vllm/vllm-openai":
      return {
        mounts: [
          ...kinferAppMounts(),
          {
            kind: "bind",
            target: "/usr/local/bin/vllm",
            source: join(root, "test/k8s/cluster/vllm-shim.sh"),
            readOnly: true,
          },
        ],
        links: {},
        entrypoint: ["vllm", "serve"],
        cmd: [],
        workingDir: "/",
        path: PATH,
      };
    default:
      throw new Error(`${image}: not an image the cluster tests can run`);
  }
}
