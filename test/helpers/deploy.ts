/**
 * deploy/ as the tests see it: the kustomizations that render to objects (Kustomize components and the
 * laptop config in deploy/local are not), rendered with kubectl kustomize (kubectl comes from the
 * control-plane build, test/k8s/build.sh), and the monitoring rules as a plain Prometheus rule file.
 */
import { execFileSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parse, parseAllDocuments, stringify } from "yaml";
import { controlPlaneBinaries } from "../k8s/control-plane.js";

export const root = new URL("../..", import.meta.url).pathname;

/** A rendered Kubernetes object (only what the tests read is typed). */
export interface KubeObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string> };
  // biome-ignore lint/suspicious/noExplicitAny: objects of every kind; each test reads the fields it checks
  spec?: any;
  data?: Record<string, string>;
  /** RBAC objects' fields (Role, ClusterRole, their bindings). */
  rules?: { apiGroups?: string[]; resources: string[]; resourceNames?: string[]; verbs: string[] }[];
  subjects?: { kind: string; name: string; namespace?: string }[];
  roleRef?: { kind: string; name: string };
}

/** Directories under deploy/ whose kustomization renders objects, top-level first. */
export function kustomizations(dir = join(root, "deploy")): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir).sort()) {
    const path = join(dir, entry);
    if (!statSync(path).isDirectory() || path === join(root, "deploy/local")) continue;
    const file = join(path, "kustomization.yaml");
    if (existsSync(file) && (parse(readFileSync(file, "utf8")) as { kind?: string }).kind !== "Component")
      out.push(path);
    out.push(...kustomizations(path));
  }
  return out;
}

export function kubectl(args: string[], input?: string): string {
  return execFileSync(join(controlPlaneBinaries(), "kubectl"), args, {
    encoding: "utf8",
    ...(input !== undefined ? { input } : {}),
    stdio: ["pipe", "pipe", "pipe"],
    maxBuffer: 64 * 2 ** 20,
  });
}

/** `kubectl kustomize <dir>` as YAML text. */
export function renderYaml(dir: string): string {
  return kubectl(["kustomize", dir]);
}

export function render(dir: string): KubeObject[] {
  return parseAllDocuments(renderYaml(dir)).map((d) => d.toJS() as KubeObject);
}

/** The PrometheusRule's spec written as a plain rule file (what promtool and Prometheus read). */
export function writeRuleFile(path: string): void {
  const rule = parse(readFileSync(join(root, "deploy/monitoring/kinfer-rules.yaml"), "utf8")) as KubeObject;
  writeFileSync(path, stringify(rule.spec));
}

/** Every PromQL expression in deploy/: rules, Flagger MetricTemplates, KEDA triggers, the dashboard. */
export function promqlExpressions(objects: readonly KubeObject[]): { where: string; expr: string }[] {
  const out: { where: string; expr: string }[] = [];
  for (const o of objects) {
    const id = `${o.kind}/${o.metadata.name}`;
    if (o.kind === "PrometheusRule") {
      for (const g of o.spec.groups)
        for (const r of g.rules) out.push({ where: `${id} ${r.record ?? r.alert}`, expr: r.expr });
    }
    if (o.kind === "MetricTemplate") out.push({ where: id, expr: o.spec.query });
    if (o.kind === "ScaledObject") {
      for (const t of o.spec.triggers)
        if (t.type === "prometheus") out.push({ where: `${id} ${t.name}`, expr: t.metadata.query });
    }
    if (o.kind === "ConfigMap" && o.metadata.labels?.grafana_dashboard === "1") {
      for (const [file, text] of Object.entries(o.data ?? {})) {
        const dashboard = JSON.parse(text) as { panels: { title: string; targets?: { expr: string }[] }[] };
        for (const p of dashboard.panels)
          for (const t of p.targets ?? []) out.push({ where: `${file} "${p.title}"`, expr: t.expr });
      }
    }
  }
  return out;
}

/** Metric names a PromQL expression reads (recorded series `level:metric:op` are names of their own). */
export function metricNames(expr: string): string[] {
  const names = expr.match(
    /(?<![\w:"$])(vllm:[a-z_]+|kinfer_[a-z_]+|DCGM_FI_[A-Z_]+|[a-z_]+:[a-z_]+:[a-z0-9_]+)/g,
  );
  return [...new Set(names ?? [])];
}
