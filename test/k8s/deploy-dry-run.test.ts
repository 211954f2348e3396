/**
 * Every kustomization under deploy/ that renders objects is applied with `kubectl apply --dry-run=server
 * --validate=strict` against the real apiserver: the strongest check that the manifests are valid objects
 * for this Kubernetes version, with unknown fields rejected. The CRDs they use are installed first:
 * prometheus-operator's, KEDA's and Flagger's, fetched from their Go modules by test/k8s/build.sh.
 */
import { execFileSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { beforeAll, describe, expect, inject, it } from "vitest";
import { kustomizations, render, renderYaml, root } from "../helpers/deploy.js";

const k8s = inject("k8s");
const kubectl = (args: string[], input?: string) =>
  execFileSync(join(k8s.bin, "kubectl"), ["--kubeconfig", k8s.kubeconfig, ...args], {
    encoding: "utf8",
    ...(input !== undefined ? { input } : {}),
    stdio: ["pipe", "pipe", "pipe"],
  });

const CRDS = readdirSync(join(k8s.bin, "crds")).map((f) => join(k8s.bin, "crds", f));

beforeAll(() => {
  for (const file of CRDS) kubectl(["apply", "--server-side", "-f", file]);
  kubectl(["wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"]);
});

describe("deploy/ against the real apiserver", () => {
  const dirs = kustomizations();

  it("installs the CRDs deploy/ uses", () => {
    const names = kubectl(["get", "crd", "-o", "name"]);
    for (const crd of [
      "canaries.flagger.app",
      "metrictemplates.flagger.app",
      "podmonitors.monitoring.coreos.com",
      "servicemonitors.monitoring.coreos.com",
      "prometheusrules.monitoring.coreos.com",
      "scaledobjects.keda.sh",
    ])
      expect(names).toContain(`customresourcedefinition.apiextensions.k8s.io/${crd}`);
  });

  it.each(dirs.map((d) => [d.slice(root.length), d]))(
    "%s renders and passes a strict server-side dry run",
    (_, dir) => {
      const docs = render(dir);
      expect(docs.length).toBeGreaterThan(0);
      // Namespaces are created for real: a dry-run namespace does not exist for the objects in it.
      for (const ns of docs.filter((d) => d.kind === "Namespace").map((d) => d.metadata.name)) {
        if (!kubectl(["get", "namespace", "-o", "name"]).includes(`namespace/${ns}\n`))
          kubectl(["create", "namespace", ns]);
      }
      // monitoring/ goes to the namespace where Prometheus runs, which the cluster already has.
      if (!kubectl(["get", "namespace", "-o", "name"]).includes("namespace/monitoring\n"))
        kubectl(["create", "namespace", "monitoring"]);
      const out = kubectl(["apply", "--dry-run=server", "--validate=strict", "-f", "-"], renderYaml(dir));
      expect(out.trim().split("\n")).toHaveLength(docs.length);
    },
  );

  it("strict validation rejects an unknown field (the check can fail)", () => {
    const bad = renderYaml(join(root, "deploy/models")).replace(
      "minReplicaCount: 0",
      "minReplicaCount: 0\n  minReplicaCuont: 1",
    );
    expect(() => kubectl(["apply", "--dry-run=server", "--validate=strict", "-f", "-"], bad)).toThrow(
      /minReplicaCuont/,
    );
  });
});
