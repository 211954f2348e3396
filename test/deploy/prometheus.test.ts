/**
 * A real Prometheus (Debian package prometheus) scrapes a gateway, its simulated vLLM replicas and
 * kinfer-scheduler on loopback, with kinfer's rules loaded (the PrometheusRule's spec). Then every PromQL
 * expression in deploy/ (recording and alert rules, Flagger MetricTemplates, KEDA triggers, the Grafana
 * dashboard) runs on that scraped data: none fails, every metric it names is one the platform exports,
 * and the ones that matter answer with values: time to first token per version, the canary's error rate,
 * the canary split, and KEDA's scale-from-zero demand for a model with no replica.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createClusterState } from "../../scheduler/cluster/cluster-state.js";
import { type SchedulerServer, startSchedulerServer } from "../../scheduler/scheduler-server.js";
import {
  type KubeObject,
  metricNames,
  promqlExpressions,
  render,
  root,
  writeRuleFile,
} from "../helpers/deploy.js";
import { freePort } from "../helpers/free-port.js";
import { type Harness, startHarness } from "../helpers/gateway-harness.js";
import { postJson } from "../helpers/sse.js";

const PROMETHEUS = process.env.PROMETHEUS ?? "prometheus";
const MODEL = "llama-3-8b";
/** A model with no replica: what KEDA sees before it scales a model from zero. */
const COLD_MODEL = "qwen2.5-32b";
/** DCGM exporter metrics (NVIDIA's names; no GPU here, so they are checked by name only). */
const DCGM = [
  "DCGM_FI_DEV_GPU_UTIL",
  "DCGM_FI_DEV_GPU_TEMP",
  "DCGM_FI_DEV_XID_ERRORS",
  "DCGM_FI_DEV_FB_USED",
];

let dir: string;
let h: Harness;
let scheduler: SchedulerServer;
let prometheus: ChildProcess;
let promUrl: string;
let objects: KubeObject[];

async function query(expr: string): Promise<{ metric: Record<string, string>; value: [number, string] }[]> {
  const res = await fetch(`${promUrl}/api/v1/query?${new URLSearchParams({ query: expr })}`);
  const body = (await res.json()) as { status: string; error?: string; data: { result: never[] } };
  if (body.status !== "success") throw new Error(`${expr}: ${body.error}`);
  return body.data.result;
}

async function until<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn().catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** A Flagger MetricTemplate's query as Flagger would send it for this test's canary. */
const flaggerQuery = (q: string) =>
  q
    .replaceAll("{{ variables.model }}", MODEL)
    .replaceAll("{{ interval }}", "1m")
    .replaceAll("{{ namespace }}", "kinfer-models")
    .replaceAll("{{ target }}", `${MODEL}-vllm`);

beforeAll(async () => {
  objects = ["deploy/models", "deploy/monitoring"].flatMap((d) => render(join(root, d)));
  h = await startHarness({
    models: { [MODEL]: { stable: 2, canary: 1 }, [COLD_MODEL]: { stable: 0 } },
    weights: { [MODEL]: { stable: 70, canary: 30 } },
  });
  const state = createClusterState();
  state.upsertNode({
    name: "gpu-node-1",
    model: "NVIDIA-H100-80GB-HBM3",
    cpuMilli: 64_000,
    memMiB: 512_000,
    gpus: 8,
    nvlinkDomainSize: 0,
    schedulable: true,
  });
  scheduler = await startSchedulerServer({
    host: "127.0.0.1",
    port: 0,
    state,
    defaultPolicy: "fragmentation",
  });

  dir = mkdtempSync(join(tmpdir(), "kinfer-prometheus-"));
  writeRuleFile(join(dir, "kinfer.rules.yaml"));
  const target = (url: string) => new URL(url).host;
  const replicas = h.all().map((r) => target(r.url));
  writeFileSync(
    join(dir, "prometheus.yml"),
    JSON.stringify({
      global: { scrape_interval: "1s", evaluation_interval: "1s" },
      rule_files: ["kinfer.rules.yaml"],
      scrape_configs: [
        { job_name: "kinfer-gateway", static_configs: [{ targets: [target(h.url)] }] },
        { job_name: "kinfer-scheduler", static_configs: [{ targets: [target(scheduler.url)] }] },
        // As the PodMonitor labels them: namespace and pod.
        {
          job_name: "vllm",
          static_configs: replicas.map((t, i) => ({
            targets: [t],
            labels: { namespace: "kinfer-models", pod: `${MODEL}-vllm-${i}` },
          })),
        },
      ],
    }),
  );
  const port = await freePort();
  promUrl = `http://127.0.0.1:${port}`;
  prometheus = spawn(
    PROMETHEUS,
    [
      `--config.file=${join(dir, "prometheus.yml")}`,
      `--storage.tsdb.path=${join(dir, "data")}`,
      `--web.listen-address=127.0.0.1:${port}`,
    ],
    { stdio: "ignore" },
  );
  await until("Prometheus ready", async () => ((await fetch(`${promUrl}/-/ready`)).ok ? true : undefined));

  // Traffic: streams to the served model (both versions), client mistakes, and requests for the model
  // with no replica. Twice: a counter's first scrape is its baseline (Prometheus cannot know it started
  // at 0), so rates need increases seen after that.
  const stream = async () => {
    const res = await postJson(`${h.url}/v1/completions`, {
      model: MODEL,
      prompt: "Tell me about GPUs.",
      max_tokens: 12,
      stream: true,
    });
    await res.text();
  };
  const traffic = async () => {
    for (let round = 0; round < 8; round++) await Promise.all(Array.from({ length: 12 }, stream));
    for (let i = 0; i < 3; i++) {
      await (await postJson(`${h.url}/v1/completions`, { model: "no-such-model", prompt: "x" })).text();
      await (await postJson(`${h.url}/v1/completions`, { model: COLD_MODEL, prompt: "x" })).text();
    }
  };
  await traffic();
  await until("the first scrape of every series", async () =>
    (await query(`kinfer_gateway_requests_total{model="${COLD_MODEL}"}`)).length > 0 &&
    (await query(`kinfer_gateway_requests_total{version="canary"}`)).length > 0
      ? true
      : undefined,
  );
  await new Promise((r) => setTimeout(r, 1500));
  await traffic();
  // Prometheus has scraped the final counts, and evaluated the rules on them.
  const total = async (selector: string) => Number((await query(`sum(${selector})`))[0]?.value[1] ?? -1);
  await until("the second round scraped", async () =>
    (await total(`kinfer_gateway_requests_total{model="${COLD_MODEL}"}`)) === 6 &&
    (await total(`kinfer_gateway_requests_total{model="${MODEL}"}`)) === 2 * 8 * 12
      ? true
      : undefined,
  );
  await until("rules evaluated on the second round", async () => {
    const r = await query('model_version:kinfer_gateway_error_ratio:rate5m{version="canary"}');
    return r.length > 0 && !Number.isNaN(Number(r[0]?.value[1])) ? true : undefined;
  });
}, 120_000);

afterAll(async () => {
  prometheus?.kill("SIGKILL");
  await h?.close();
  await scheduler?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe("kinfer's PromQL on a real Prometheus", () => {
  it("every rule evaluates without error", async () => {
    const res = await fetch(`${promUrl}/api/v1/rules`);
    const body = (await res.json()) as {
      data: { groups: { rules: { name: string; health: string; lastError?: string }[] }[] };
    };
    const rules = body.data.groups.flatMap((g) => g.rules);
    expect(rules).toHaveLength(18);
    for (const r of rules) expect(r.health, `${r.name}: ${r.lastError}`).toBe("ok");
  });

  it("every metric deploy/ reads is one the platform exports (or DCGM's, or a recorded series)", async () => {
    // What the exporters declare (# TYPE lines), whether or not a series exists yet: a counter such as
    // retries has none until the first retry.
    const declared = new Set<string>();
    for (const url of [h.url, scheduler.url, h.all()[0]?.url]) {
      const text = await (await fetch(`${url}/metrics`)).text();
      for (const [, name, type] of text.matchAll(/^# TYPE (\S+) (\w+)$/gm)) {
        declared.add(name as string);
        if (type === "histogram") for (const s of ["_bucket", "_sum", "_count"]) declared.add(`${name}${s}`);
        if (type === "counter" && !name?.endsWith("_total")) declared.add(`${name}_total`);
      }
    }
    const rules = objects
      .find((o) => o.kind === "PrometheusRule")
      ?.spec.groups.flatMap((g: { rules: { record?: string }[] }) => g.rules);
    for (const r of rules) if (r.record) declared.add(r.record);
    const missing: string[] = [];
    for (const { where, expr } of promqlExpressions(objects)) {
      for (const name of metricNames(expr))
        if (!DCGM.includes(name) && !declared.has(name)) missing.push(`${where}: ${name}`);
    }
    expect(missing).toEqual([]);
    expect(declared).toContain("vllm:num_requests_waiting");
    expect(declared).toContain("kinfer_scheduler_decisions_total");
  });

  it("every expression runs: rules, dashboard panels, Flagger templates, KEDA triggers", async () => {
    const exprs = promqlExpressions(objects);
    for (const { where, expr } of exprs) {
      const q = flaggerQuery(expr).replaceAll("$__rate_interval", "1m").replaceAll("$model", ".*");
      await expect(query(q), where).resolves.toBeDefined();
    }
  });

  it("the dashboard's gateway and vLLM panels have data", async () => {
    const dashboard = promqlExpressions(objects).filter((e) => e.where.startsWith("kinfer.json"));
    const withData: string[] = [];
    for (const { where, expr } of dashboard) {
      // Nothing of the kind happened here: no GPU, no retry or ejection, no pod scheduled, no shared prefix.
      if (/DCGM|ejections|retries|prefix_cache_hits|kinfer_scheduler/.test(expr)) continue;
      const result = await query(expr.replaceAll("$__rate_interval", "1m").replaceAll("$model", ".*"));
      if (result.length === 0) withData.push(`no data: ${where}: ${expr}`);
    }
    expect(withData).toEqual([]);
  });

  it("Flagger's templates judge the canary: error rate 0 %, time to first token in seconds", async () => {
    const template = (name: string) =>
      objects.find((o) => o.kind === "MetricTemplate" && o.metadata.name.endsWith(name))?.spec
        .query as string;
    const [errorRate] = await query(flaggerQuery(template("kinfer-error-rate")));
    expect(Number(errorRate?.value[1])).toBe(0);
    const [ttft] = await query(flaggerQuery(template("kinfer-ttft-p95")));
    expect(Number(ttft?.value[1])).toBeGreaterThan(0);
    expect(Number(ttft?.value[1])).toBeLessThan(2);
  });

  it("the canary split shows both versions", async () => {
    const split = await query(
      `sum by (version) (increase(kinfer_gateway_requests_total{model="${MODEL}"}[5m])) / ignoring (version) group_left sum (increase(kinfer_gateway_requests_total{model="${MODEL}"}[5m]))`,
    );
    const share = Object.fromEntries(split.map((s) => [s.metric.version, Number(s.value[1])]));
    expect(share.canary).toBeGreaterThan(0.1);
    expect(share.stable).toBeGreaterThan(0.5);
  });

  it("KEDA's held trigger sees requests the gateway holds for a model with no replica (scale from zero)", async () => {
    const scaled = objects.find((o) => o.kind === "ScaledObject");
    const held = scaled?.spec.triggers.find((t: { name: string }) => t.name === "held").metadata;
    expect(held.query).toContain(COLD_MODEL);
    // As deploy/base/gateway/gateway.yaml configures the scale-from-zero model: its requests wait.
    const c = h.gateway.config();
    h.gateway.applyConfig({
      ...c,
      models: c.models.map((m) =>
        m.name === COLD_MODEL ? { ...m, flow: { activationTimeoutMs: 60_000 } } : m,
      ),
    });
    const stop = new AbortController();
    const waiting = [1, 2, 3].map(() =>
      postJson(`${h.url}/v1/completions`, { model: COLD_MODEL, prompt: "x" }, { signal: stop.signal }).catch(
        () => undefined,
      ),
    );
    try {
      const value = await until("the held requests in Prometheus", async () => {
        const [v] = await query(held.query);
        return Number(v?.value[1]) === 3 ? Number(v?.value[1]) : undefined;
      });
      expect(value).toBeGreaterThan(Number(held.activationThreshold));
    } finally {
      stop.abort();
      await Promise.all(waiting);
      h.gateway.applyConfig(c);
    }
  });

  it("KEDA's demand trigger sees requests for a model with no replica (scale from zero)", async () => {
    const scaled = objects.find((o) => o.kind === "ScaledObject");
    const demand = scaled?.spec.triggers.find((t: { name: string }) => t.name === "demand").metadata;
    expect(demand.query).toContain(COLD_MODEL);
    const [value] = await query(demand.query);
    expect(Number(value?.value[1])).toBeGreaterThan(Number(demand.activationThreshold));
  });
});
