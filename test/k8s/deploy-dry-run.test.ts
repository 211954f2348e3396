/**
 * Every kustomization under deploy/ (deploy/local is the laptop config, not Kubernetes objects) is
 * rendered with kubectl kustomize and applied with `kubectl apply --dry-run=server` against the real
 * apiserver: the strongest check that the manifests are valid objects for this Kubernetes version.
 * CRDs are applied first: Flagger's (../shared/data/crds/flagger.yaml).
 */
import { execFileSync } from "node:child_process";
import { existsSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { beforeAll, describe, expect, inject, it } from "vitest";
import { parseAllDocuments } from "yaml";

const k8s = inject("k8s");
const root = new URL("../..", import.meta.url).pathname;
const kubectl = (args: string[], input?: string) =>
  execFileSync(join(k8s.bin, "kubectl"), ["--kubeconfig", k8s.kubeconfig, ...args], {
    encoding: "utf8",
    ...(input !== undefined ? { input } : {}),
    stdio: ["pipe", "pipe", "pipe"],
  });

/** Directories under deploy/ that hold a kustomization, deploy/local excepted. */
function kustomizations(dir = join(root, "deploy")): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir)) {
    const path = join(dir, entry);
    if (!statSync(path).isDirectory() || path === join(root, "deploy/local")) continue;
    if (existsSync(join(path, "kustomization.yaml"))) out.push(path);
    out.push(...kustomizations(path).filter((p) => !out.includes(p)));
  }
  return out;
}

beforeAll(() => {
  kubectl(["apply", "--server-side", "-f", join(root, "../shared/data/crds/flagger.yaml")]);
  kubectl(["wait", "--for=condition=Established", "crd/canaries.flagger.app", "--timeout=60s"]);
});

describe("deploy/ against the real apiserver", () => {
  const dirs = kustomizations();

  it("has kustomizations to check", () => {
    expect(dirs.map((d) => d.slice(root.length))).toContain("deploy/base");
  });

  it.each(dirs.map((d) => [d.slice(root.length), d]))(
    "%s renders and passes a server-side dry run",
    (_, dir) => {
      const rendered = kubectl(["kustomize", dir]);
      const docs = parseAllDocuments(rendered).map(
        (d) => d.toJS() as { kind: string; metadata: { name: string } },
      );
      expect(docs.length).toBeGreaterThan(0);
      // Namespaces are created for real (a dry-run namespace does not exist for the objects in it).
      for (const ns of docs.filter((d) => d.kind === "Namespace")) {
        try {
          kubectl(["create", "namespace", ns.metadata.name]);
        } catch {
          // already there from an earlier directory
        }
      }
      const out = kubectl(["apply", "--dry-run=server", "-f", "-"], rendered);
      expect(out.trim().split("\n")).toHaveLength(docs.length);
    },
  );
});
