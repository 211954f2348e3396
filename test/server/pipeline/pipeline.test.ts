/**
 * The request pipeline on its own, wired as server/gateway.ts wires it (routing table, flow control, the
 * relay, metrics, the admitter) against scripted replicas (test/helpers/scripted-fleet.ts): the order of
 * its checks (who is calling, capacity, the request, the key's limits, a slot), what it charges a tenant
 * for each way a request ends, the metrics, log line, span and rollout outcome of every request, and the
 * promise that every request ends exactly once: in-flight counts, flow slots, retry-budget entries and
 * upstream requests all given back, whether the client reads to the end, stops, stops reading, leaves
 * while it waits, or is cut by a drain. The integration tests show the same through the protocols.
 */
import { durationMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { Agent } from "undici";
import { afterEach, describe, expect, it } from "vitest";
import { ErrorDetailSchema, ErrorReason } from "../../../gen/es/kinfer/inference/v1/inference_pb.js";
import { effectiveFlow, parseGatewayConfig } from "../../../server/config/gateway-config.js";
import { createStaticSource } from "../../../server/discovery/static-source.js";
import { createFlowController, type FlowController } from "../../../server/flow/flow-control.js";
import { createGatewayMetrics } from "../../../server/metrics/gateway-metrics.js";
import { createPipeline, type Pipeline } from "../../../server/pipeline/pipeline.js";
import { createRetryBudget } from "../../../server/relay/retry-budget.js";
import { createOutlierDetector } from "../../../server/replicas/outlier-detection.js";
import type { InferenceEvent, InferenceRequest } from "../../../server/request/inference-request.js";
import { createRouter } from "../../../server/routing/router.js";
import { createRoutingTable } from "../../../server/routing/routing-table.js";
import { type Admitter, createAdmitter, type TenantUsage } from "../../../server/tenants/admission.js";
import {
  type ApiKeyLimits,
  type ApiKeyRecord,
  createKeyIndex,
  type KeyStore,
  newKey,
} from "../../../server/tenants/key-store.js";
import type { RequestOutcome, RequestSpan, RequestTracer } from "../../../server/tracing/request-tracing.js";
import { waitFor } from "../../helpers/idle.js";
import {
  type Answer,
  chunk,
  finishChunk,
  type ScriptedFleet,
  silence,
  sse,
  startScriptedFleet,
  status,
  streamOf,
} from "../../helpers/scripted-fleet.js";

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0)) await c();
});

interface KeyOptions {
  readonly limits?: Partial<ApiKeyLimits>;
  readonly allowedModels?: string[];
  readonly priority?: ApiKeyRecord["priority"];
}

interface Rig {
  readonly pipeline: Pipeline;
  readonly fleet: ScriptedFleet;
  /** Log lines (pino's object and message). */
  readonly logs: { level: string; fields: Record<string, unknown>; msg: string }[];
  /** The tenant usage the admitter reported ("tokens acme 12", ...). */
  readonly usage: string[];
  /** Every request's span outcome. */
  readonly spans: RequestOutcome[];
  /** onRequestEnd's calls. */
  readonly ended: unknown[][];
  readonly admitter: Admitter | undefined;
  readonly flow: FlowController;
  /** The secret of the tenant "acme"'s key, when keys are configured. */
  readonly secret: string;
  /** A metric's value summed over the series matching `labels`; for a histogram, its count (or `part`). */
  metric(name: string, labels?: Record<string, string>, part?: string): Promise<number>;
  /** Adds the fleet's replica `i` to the model (as discovery would). */
  addReplica(i: number): void;
  /** Nothing held: no request in flight, no flow slot, no retry-budget entry, no upstream request open. */
  expectIdle(): Promise<void>;
}

async function rig(
  options: {
    replicas?: number;
    routed?: number;
    config?: Record<string, unknown>;
    key?: KeyOptions;
    /** Thrown by the tracer when an attempt starts: a bug below the pipeline. */
    attemptError?: Error;
    /** Without the optional hooks (no tracer, no onRequestEnd). */
    bare?: boolean;
  } = {},
): Promise<Rig> {
  const n = options.replicas ?? 1;
  const fleet = await startScriptedFleet(n);
  const dispatcher = new Agent({ headersTimeout: 0, bodyTimeout: 0 });
  cleanups.push(async () => {
    await dispatcher.destroy();
    await fleet.close();
  });
  const routed = [...fleet.urls.slice(0, options.routed ?? n)];
  const configOf = (replicas: string[]) =>
    parseGatewayConfig({
      routing: { algorithm: "round-robin" },
      flow: { criticalReserve: 0 },
      ...options.config,
      models: [{ name: "m", adapters: ["sql", "chat"], versions: [{ name: "v1", replicas }] }],
    });
  let config = configOf(routed);
  const now = () => performance.now();
  const table = createRoutingTable();
  const rebuild = () => table.apply(config, createStaticSource(config).endpoints(), "static");
  rebuild();
  const metrics = createGatewayMetrics(() => table.replicas(), now);
  const flow = createFlowController({
    now,
    setTimer(at, fn) {
      const t = setTimeout(fn, Math.max(0, at - now()));
      return () => clearTimeout(t);
    },
    model: (name) => table.model(name),
    limits: (model) => effectiveFlow(config, model),
    hooks: metrics.flow,
  });
  table.onChange(() => flow.notify());
  const usage: string[] = [];
  const tenantUsage: TenantUsage = {
    admitted: (t) => usage.push(`admitted ${t}`),
    refused: (t, why) => usage.push(`refused ${t} ${why}`),
    streams: (t, d) => usage.push(`streams ${t} ${d}`),
    tokens: (t, k) => usage.push(`tokens ${t} ${k}`),
  };
  let admitter: Admitter | undefined;
  let secret = "";
  if (options.key !== undefined) {
    const index = createKeyIndex();
    const key = newKey({ tenant: "acme", ...options.key });
    index.set([key.record]);
    secret = key.secret;
    const store: KeyStore = {
      ...index,
      create: () => {
        throw new Error("not used");
      },
      revoke: () => {
        throw new Error("not used");
      },
      close() {},
    };
    admitter = createAdmitter(store, tenantUsage, now);
  }
  const logs: Rig["logs"] = [];
  const logAt =
    (level: string) =>
    (fields: Record<string, unknown>, msg: string): void => {
      logs.push({ level, fields, msg });
    };
  const log = { info: logAt("info"), error: logAt("error"), warn: logAt("warn"), debug: logAt("debug") };
  const spans: RequestOutcome[] = [];
  const tracer: RequestTracer = {
    start: (): RequestSpan => ({
      attempt: () => {
        if (options.attemptError !== undefined) throw options.attemptError;
        return { headers: {}, end() {} };
      },
      end: (outcome) => spans.push(outcome),
    }),
    shutdown: async () => {},
  };
  const ended: unknown[][] = [];
  const retryBudget = createRetryBudget(config.retry.budgetRatio, config.retry.minRetries);
  const pipeline = createPipeline({
    config: () => config,
    ...(options.bare ? {} : { onRequestEnd: (...args: unknown[]) => ended.push(args), tracer }),
    admitter,
    table,
    flow,
    metrics,
    log: log as never,
    now,
    relay: {
      get config() {
        return config;
      },
      router: createRouter({ now, random: () => 0, prefixIndex: config.prefixIndex }),
      outliers: createOutlierDetector(config.ejection),
      retryBudget,
      dispatcher,
      now,
      embeddingSizes: new Map(),
    },
  });
  const metric = async (name: string, labels: Record<string, string> = {}, part = "_count") => {
    const m = (await metrics.registry.getMetricsAsJSON()).find((x) => x.name === name);
    return (
      (m?.values ?? [])
        .filter((v) => Object.entries(labels).every(([k, val]) => String(v.labels[k]) === val))
        // Histograms: their observations' count (or `part`: "_sum").
        .filter((v) => {
          const name = (v as { metricName?: string }).metricName;
          return name === undefined || name.endsWith(part);
        })
        .reduce((sum, v) => sum + v.value, 0)
    );
  };
  return {
    pipeline,
    fleet,
    logs,
    usage,
    spans,
    ended,
    admitter,
    flow,
    secret,
    metric,
    addReplica(i) {
      routed.push(fleet.urls[i] as string);
      config = configOf(routed);
      rebuild();
    },
    async expectIdle() {
      await until(() => fleet.urls.every((_, i) => fleet.open(i) === 0));
      expect(pipeline.inFlight).toBe(0);
      expect(pipeline.counts.accepted).toBe(pipeline.counts.ended);
      expect(retryBudget.inFlight).toBe(0);
      for (const q of flow.snapshot()) {
        expect(q.active).toBe(0);
        expect(q.queued).toEqual({ critical: 0, standard: 0, sheddable: 0 });
      }
      expect(table.replicas().every((r) => r.inFlight === 0 && r.prefillTokens === 0)).toBe(true);
      if (admitter !== undefined) expect(admitter.activity()).toEqual({ streams: 0, reservedTokens: 0 });
    },
  };
}

const until = (cond: () => boolean, ms?: number) => waitFor(cond, "the condition", ms);

const request = (over: Partial<InferenceRequest> = {}): InferenceRequest => ({
  requestId: "req-1",
  protocol: "connect",
  model: "m",
  // 40 characters: an estimate of 10 prompt tokens.
  messages: [{ role: "user", content: "x".repeat(40) }],
  sampling: { stop: [], maxTokens: 20 },
  affinityKey: "",
  version: "",
  passthrough: {},
  signal: new AbortController().signal,
  credential: "",
  ...over,
});

/** Runs a request to its end: its events and its error (a ConnectError, always). */
async function run(
  r: Rig,
  req = request(),
): Promise<{ events: InferenceEvent[]; error: ConnectError | undefined }> {
  const events: InferenceEvent[] = [];
  try {
    for await (const e of r.pipeline.run(req)) events.push(e);
    return { events, error: undefined };
  } catch (err) {
    expect(err).toBeInstanceOf(ConnectError);
    return { events, error: err as ConnectError };
  }
}

const detail = (err: ConnectError | undefined) => err?.findDetails(ErrorDetailSchema)[0];

/** A stream the replica sends up to its first token, then holds until `release()`. */
function heldStream(): { answer: Answer; release: () => void } {
  const held: (() => void)[] = [];
  return {
    answer: (_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.write(sse(chunk("a", { prompt: 10, completion: 1 })));
      held.push(() => res.end(sse(finishChunk("stop"), "[DONE]")));
    },
    release: () => {
      for (const h of held.splice(0)) h();
    },
  };
}

describe("a request that finishes", () => {
  it("yields the relay's events and accounts once: metrics, log line, span, rollout outcome", async () => {
    const r = await rig();
    r.fleet.answer(0, (_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.write(sse(chunk("a", { prompt: 12, completion: 1, cached: 4 })));
      setTimeout(
        () =>
          res.end(
            sse(
              chunk("b", { prompt: 12, completion: 2, cached: 4 }),
              finishChunk("stop"),
              {
                choices: [],
                usage: {
                  prompt_tokens: 12,
                  completion_tokens: 3, // for 2 texts: one token decoded to nothing
                  prompt_tokens_details: { cached_tokens: 4 },
                },
              },
              "[DONE]",
            ),
          ),
        30,
      );
    });
    const before = performance.now();
    const { events, error } = await run(r);
    const took = performance.now() - before;
    expect(error).toBeUndefined();
    expect(events.map((e) => e.type)).toEqual(["start", "delta", "delta", "finish"]);
    expect(r.pipeline.counts).toEqual({ accepted: 1, ended: 1 });
    const labels = { model: "m", version: "v1" };
    expect(
      await r.metric("kinfer_gateway_requests_total", { ...labels, protocol: "connect", code: "ok" }),
    ).toBe(1);
    expect(await r.metric("kinfer_gateway_tokens_total", { ...labels, kind: "prompt" })).toBe(12);
    expect(await r.metric("kinfer_gateway_tokens_total", { ...labels, kind: "completion" })).toBe(3);
    expect(await r.metric("kinfer_gateway_tokens_total", { ...labels, kind: "cached" })).toBe(4);
    expect(await r.metric("kinfer_gateway_time_to_first_token_seconds", labels)).toBe(1);
    expect(await r.metric("kinfer_gateway_inter_token_latency_seconds", labels)).toBe(1);
    // In seconds: the request's duration, its first token and the gap between its two tokens (30 ms at the
    // replica; less when the first one's chunk reached the gateway late, on a loaded machine).
    const seconds = async (name: string) => r.metric(name, labels, "_sum");
    expect(await seconds("kinfer_gateway_request_duration_seconds")).toBeGreaterThan(0.02);
    expect(await seconds("kinfer_gateway_request_duration_seconds")).toBeLessThan(took / 1000 + 0.001);
    expect(await seconds("kinfer_gateway_time_to_first_token_seconds")).toBeGreaterThan(0);
    expect(await seconds("kinfer_gateway_time_to_first_token_seconds")).toBeLessThan(took / 1000);
    expect(await seconds("kinfer_gateway_inter_token_latency_seconds")).toBeGreaterThan(0);
    expect(await seconds("kinfer_gateway_inter_token_latency_seconds")).toBeLessThan(took / 1000);
    expect(await r.metric("kinfer_gateway_requests_in_flight", { model: "m" })).toBe(0);
    const line = r.logs.find((l) => l.msg === "request");
    expect(line?.fields).toMatchObject({
      requestId: "req-1",
      protocol: "connect",
      model: "m",
      version: "v1",
      replica: r.fleet.urls[0],
      attempts: 1,
      code: "ok",
      promptTokens: 12,
      completionTokens: 3,
    });
    const ttft = line?.fields.ttftMs as number;
    expect(ttft).toBeGreaterThan(0);
    expect(ttft).toBeLessThan(took);
    expect(line?.fields.totalMs).toBeGreaterThanOrEqual(25);
    expect(line?.fields.totalMs).toBeLessThanOrEqual(Math.ceil(took));
    // Accepted at (wall clock, ms since the epoch): within this test's run.
    expect(Math.abs((line?.fields.startedAt as number) - (performance.timeOrigin + before))).toBeLessThan(
      took + 1,
    );
    expect(r.spans).toEqual([
      expect.objectContaining({
        model: "m",
        version: "v1",
        replica: r.fleet.urls[0],
        attempts: 1,
        promptTokens: 12,
        completionTokens: 3,
        code: undefined,
      }),
    ]);
    expect(r.spans[0]?.ttftMs).toBeCloseTo(ttft, 1);
    expect(r.spans[0]?.queueWaitMs).toBeGreaterThanOrEqual(0);
    expect(r.spans[0]?.queueWaitMs).toBeLessThan(ttft);
    expect(r.ended).toHaveLength(1);
    expect(r.ended[0]?.slice(0, 3)).toEqual(["m", "v1", undefined]);
    expect(r.ended[0]?.[3]).toBeCloseTo(ttft, 1);
    await r.expectIdle();
  });

  it("an adapter named as the model goes to the replicas as their model, counted under its base model", async () => {
    const r = await rig();
    r.fleet.answer(0, streamOf(["x"]));
    const { error } = await run(r, request({ model: "sql" }));
    expect(error).toBeUndefined();
    expect(r.fleet.seen[0]?.body.model).toBe("sql");
    expect(await r.metric("kinfer_gateway_requests_total", { model: "m", code: "ok" })).toBe(1);
  });
});

describe("refused before any work", () => {
  it("over limits.maxInFlight: RESOURCE_EXHAUSTED (OVERLOADED, retry in 1 s), the first request unharmed", async () => {
    const r = await rig({ config: { limits: { maxInFlight: 1 } } });
    const held = heldStream();
    r.fleet.answer(0, held.answer);
    const first = r.pipeline.run(request());
    expect((await first.next()).value).toMatchObject({ type: "start" });
    const second = await run(r, request({ requestId: "req-2" }));
    expect(second.error?.code).toBe(Code.ResourceExhausted);
    expect(detail(second.error)?.reason).toBe(ErrorReason.OVERLOADED);
    expect(second.error?.rawMessage).toBe("the gateway is at capacity");
    const retryAfter = detail(second.error)?.retryAfter;
    expect(retryAfter !== undefined ? durationMs(retryAfter) : undefined).toBe(1000);
    expect(r.fleet.seen).toHaveLength(1);
    held.release();
    const rest: InferenceEvent[] = [];
    for await (const e of first) rest.push(e);
    expect(rest.at(-1)?.type).toBe("finish");
    expect(await r.metric("kinfer_gateway_requests_total", { code: "resource_exhausted" })).toBe(1);
    // A request refused before routing has no version: it is no rollout's outcome.
    expect(r.ended).toEqual([["m", "v1", undefined, expect.any(Number)]]);
    await r.expectIdle();
  });

  it("a model that is not configured: NOT_FOUND, counted as unknown; a name too long is cut to 256 characters in the log", async () => {
    const r = await rig();
    expect((await run(r, request({ model: "other" }))).error?.code).toBe(Code.NotFound);
    expect(await r.metric("kinfer_gateway_requests_total", { model: "unknown", code: "not_found" })).toBe(1);
    expect(await r.metric("kinfer_gateway_requests_total", { model: "other" })).toBe(0);
    r.logs.length = 0;
    // A name longer than any configured one is refused as invalid, and cut in the log line.
    const name = "n".repeat(300);
    const { error } = await run(r, request({ model: name }));
    expect(error?.code).toBe(Code.InvalidArgument);
    expect(await r.metric("kinfer_gateway_requests_total", { model: name })).toBe(0);
    expect(r.logs.find((l) => l.msg === "request")?.fields).toMatchObject({
      model: "n".repeat(256),
      code: "InvalidArgument",
      version: "",
      attempts: 0,
    });
    expect(r.logs.find((l) => l.msg === "request")?.fields).toMatchObject({ replica: "", ttftMs: undefined });
    expect(r.logs.some((l) => l.msg === "internal error")).toBe(false);
    // Only what is known goes into the span.
    for (const span of r.spans) {
      expect(Object.keys(span)).not.toContain("model");
      expect(Object.keys(span)).not.toContain("queueWaitMs");
      expect(Object.keys(span)).not.toContain("ttftMs");
    }
    // The in-flight gauge counts configured models only, and is back at 0.
    expect(await r.metric("kinfer_gateway_requests_in_flight", { model: "unknown" })).toBe(0);
    expect(r.ended).toEqual([]); // no version was picked: nothing for the rollout to judge
    await r.expectIdle();
  });

  it("an embedding request whose answer is known to pass its bound takes no slot and no replica's time", async () => {
    const r = await rig({ config: { limits: { maxEmbeddingBytes: 1024 } }, key: {} });
    const { messages: _, ...base } = request({ credential: "" });
    const { error } = await run(r, {
      ...base,
      credential: r.secret,
      embed: { inputs: ["a", "b"], dimensions: 256 },
    } as InferenceRequest);
    expect(error?.code).toBe(Code.InvalidArgument);
    expect(r.fleet.seen).toHaveLength(0);
    expect(r.usage).toEqual([]); // not admitted, not charged
    expect(r.ended).toEqual([]); // refused before a version was picked
    expect(await r.metric("kinfer_gateway_requests_in_flight", { model: "m" })).toBe(0);
    await r.expectIdle();
  });
});

describe("API keys", () => {
  it("who is calling comes first: a caller without a valid key learns nothing else, even at capacity", async () => {
    const r = await rig({ config: { limits: { maxInFlight: 1 } }, key: {} });
    const held = heldStream();
    r.fleet.answer(0, held.answer);
    const first = r.pipeline.run(request({ credential: r.secret }));
    await first.next();
    for (const credential of ["", "sk-not-a-key"]) {
      const { error } = await run(r, request({ credential, model: "no-such-model" }));
      expect(error?.code).toBe(Code.Unauthenticated);
    }
    held.release();
    for await (const _ of first) {
    }
    await r.expectIdle();
  });

  it("reserves the prompt estimate plus max_tokens (default when unset), and charges the replica's usage at the end", async () => {
    // A budget of exactly one request's estimate: 10 prompt tokens (40 characters) + 20 max_tokens.
    const r = await rig({ key: { limits: { tokensPerMinute: 30 } } });
    r.fleet.answer(0, streamOf(["a", "b"], "stop", { prompt: 9, completion: 2, cached: 0 }));
    const over = await run(r, request({ credential: r.secret, sampling: { stop: [], maxTokens: 21 } }));
    expect(detail(over.error)?.reason).toBe(ErrorReason.TOKEN_BUDGET_EXHAUSTED);
    const ok = await run(r, request({ credential: r.secret }));
    expect(ok.error).toBeUndefined();
    expect(r.usage.filter((u) => u.startsWith("tokens"))).toEqual(["tokens acme 11"]);
    // Without max_tokens the reservation is the prompt plus limits.defaultMaxTokens.
    const r2 = await rig({
      key: { limits: { tokensPerMinute: 30 } },
      config: { limits: { defaultMaxTokens: 20 } },
    });
    r2.fleet.answer(0, streamOf(["a"]));
    const noMax = await run(r2, request({ credential: r2.secret, sampling: { stop: [] } }));
    expect(noMax.error).toBeUndefined();
    const r3 = await rig({
      key: { limits: { tokensPerMinute: 30 } },
      config: { limits: { defaultMaxTokens: 21 } },
    });
    const overDefault = await run(r3, request({ credential: r3.secret, sampling: { stop: [] } }));
    expect(detail(overDefault.error)?.reason).toBe(ErrorReason.TOKEN_BUDGET_EXHAUSTED);
    await r.expectIdle();
  });

  it("an embedding request reserves only its inputs' estimate", async () => {
    const r = await rig({ key: { limits: { tokensPerMinute: 10 } } });
    r.fleet.answer(0, (_req, res) => {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(
        JSON.stringify({
          data: [{ index: 0, embedding: [0.5, 0.25] }],
          usage: { prompt_tokens: 7 },
        }),
      );
    });
    const { messages: _, ...base } = request();
    const { events, error } = await run(r, {
      ...base,
      credential: r.secret,
      embed: { inputs: ["y".repeat(40)] },
    } as InferenceRequest);
    expect(error).toBeUndefined();
    expect(events.map((e) => e.type)).toEqual(["start", "embeddings", "finish"]);
    expect(r.usage.filter((u) => u.startsWith("tokens"))).toEqual(["tokens acme 7"]);
    // Its inputs' characters are its estimate: 44 of them (11 tokens) pass a budget of 10.
    const over = await run(r, {
      ...base,
      credential: r.secret,
      embed: { inputs: ["y".repeat(20), "y".repeat(24)] },
    } as InferenceRequest);
    expect(detail(over.error)?.reason).toBe(ErrorReason.TOKEN_BUDGET_EXHAUSTED);
    await r.expectIdle();
  });

  it("a stream cut after its first token is charged the replica's last usage; one with no usage, the estimate plus tokens relayed; one that failed before any token, nothing", async () => {
    const r = await rig({ key: {} });
    // Cancelled after two tokens, the replica having counted 10 prompt + 2 completion tokens.
    r.fleet.answer(0, (_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.write(sse(chunk("a", { prompt: 9, completion: 1 }), chunk("b", { prompt: 9, completion: 2 })));
    });
    let deltas = 0;
    for await (const e of r.pipeline.run(request({ credential: r.secret })))
      if (e.type === "delta" && ++deltas === 2) break;
    expect(r.usage.filter((u) => u.startsWith("tokens"))).toEqual(["tokens acme 11"]);
    expect(await r.metric("kinfer_gateway_tokens_total", { kind: "completion" })).toBe(2);
    expect(await r.metric("kinfer_gateway_requests_total", { code: "canceled" })).toBe(1);
    expect(r.spans[0]).toMatchObject({ promptTokens: 9, completionTokens: 2, code: Code.Canceled });
    // The same with no usage reported: the prompt's estimate (10) and the 3 tokens relayed.
    r.usage.length = 0;
    r.fleet.answer(0, (_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.write(sse(chunk("a"), chunk("b"), chunk("c")));
    });
    deltas = 0;
    for await (const e of r.pipeline.run(request({ credential: r.secret })))
      if (e.type === "delta" && ++deltas === 3) break;
    expect(r.usage.filter((u) => u.startsWith("tokens"))).toEqual(["tokens acme 13"]);
    expect(r.spans[1]).toMatchObject({ promptTokens: 0, completionTokens: 3 });
    // Failed before its first token: nothing charged.
    r.usage.length = 0;
    r.fleet.answer(0, status(400, "bad request"));
    const failed = await run(r, request({ credential: r.secret }));
    expect(failed.error?.code).toBe(Code.InvalidArgument);
    expect(r.usage.filter((u) => u.startsWith("tokens"))).toEqual(["tokens acme 0"]);
    // Its rollout outcome and log line have no time to first token.
    expect(r.ended.at(-1)).toEqual(["m", "v1", Code.InvalidArgument, undefined]);
    expect(r.logs.filter((l) => l.msg === "request").at(-1)?.fields.ttftMs).toBeUndefined();
    await r.expectIdle();
  });

  it("a key's priority is its requests' default and the most they may claim", async () => {
    const r = await rig({ key: { priority: "standard" } });
    r.fleet.answer(0, streamOf(["x"]));
    const sent = async (priority: InferenceRequest["priority"]) => {
      await run(r, request({ credential: r.secret, priority }));
      return r.fleet.seen.at(-1)?.body.priority;
    };
    expect(await sent("critical")).toBeUndefined(); // capped at standard (vLLM's default, not sent)
    expect(await sent("sheddable")).toBe(1);
    expect(await sent(undefined)).toBeUndefined();
    const critical = await rig({ key: { priority: "critical" } });
    critical.fleet.answer(0, streamOf(["x"]));
    await run(critical, request({ credential: critical.secret }));
    expect(critical.fleet.seen.at(-1)?.body.priority).toBe(-1);
    const sheddable = await rig({ key: { priority: "sheddable" } });
    sheddable.fleet.answer(0, streamOf(["x"]));
    await run(sheddable, request({ credential: sheddable.secret, priority: "critical" }));
    expect(sheddable.fleet.seen.at(-1)?.body.priority).toBe(1);
    // Without a key, the request's own claim.
    const open = await rig();
    open.fleet.answer(0, streamOf(["x"]));
    await run(open, request({ priority: "critical" }));
    expect(open.fleet.seen.at(-1)?.body.priority).toBe(-1);
  });

  it("lists only the models a key allows; every model without keys", async () => {
    const r = await rig({ key: { allowedModels: ["m"] } });
    const filter = r.pipeline.modelFilter(r.secret);
    expect([filter("m"), filter("other")]).toEqual([true, false]);
    // A model's name allows its adapters too.
    expect([filter("m", "sql"), filter("other", "sql")]).toEqual([true, false]);
    expect(() => r.pipeline.modelFilter("")).toThrow(ConnectError);
    const all = await rig({ key: {} });
    expect(all.pipeline.modelFilter(all.secret)("anything")).toBe(true);
    const open = await rig();
    expect(open.pipeline.modelFilter("")("anything")).toBe(true);
  });
});

describe("API keys for LoRA adapters", () => {
  it("a key that names an adapter may use that adapter only, not its base model nor its other adapters", async () => {
    const r = await rig({ key: { allowedModels: ["sql"] } });
    r.fleet.answer(0, streamOf(["x"]));
    expect((await run(r, request({ credential: r.secret, model: "sql" }))).error).toBeUndefined();
    expect(r.fleet.seen[0]?.body.model).toBe("sql");
    for (const model of ["m", "chat"]) {
      const { error } = await run(r, request({ credential: r.secret, model }));
      expect(error?.code).toBe(Code.NotFound);
      // Refused as if it did not exist, under the name the client asked for.
      expect(error?.rawMessage).toContain(`"${model}"`);
    }
    expect(r.fleet.seen).toHaveLength(1);
    // Refused before routing (no version drawn): no rollout's outcome, only the served request's.
    expect(r.ended).toEqual([["m", "v1", undefined, expect.any(Number)]]);
    expect(r.usage.filter((u) => u.startsWith("refused"))).toEqual([
      "refused acme model_not_allowed",
      "refused acme model_not_allowed",
    ]);
    const filter = r.pipeline.modelFilter(r.secret);
    expect([filter("m"), filter("m", "sql"), filter("m", "chat")]).toEqual([false, true, false]);
    await r.expectIdle();
  });
});

describe("every request ends exactly once", () => {
  it("a consumer that stops early cancelled: CANCELED, the upstream request closed", async () => {
    const r = await rig();
    const held = heldStream();
    r.fleet.answer(0, held.answer);
    for await (const e of r.pipeline.run(request())) if (e.type === "delta") break;
    expect(await r.metric("kinfer_gateway_requests_total", { code: "canceled" })).toBe(1);
    expect(r.logs.find((l) => l.msg === "request")?.fields.code).toBe("Canceled");
    await until(() => r.fleet.abandoned[0] === 1);
    await r.expectIdle();
  });

  it("a client that stops reading is cut after slowReaderMs, while it holds an event: accounted, its stream closed", async () => {
    const r = await rig({ config: { timeouts: { slowReaderMs: 150 } } });
    r.fleet.answer(0, (_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.write(sse(chunk("a"), chunk("b")));
    });
    let cut = 0;
    const gen = r.pipeline.run(request({ onSlowReader: () => cut++ }));
    expect((await gen.next()).value).toMatchObject({ type: "start" });
    expect((await gen.next()).value).toMatchObject({ type: "delta" });
    // The consumer holds the delta and pulls nothing more.
    const began = performance.now();
    await until(() => r.pipeline.counts.ended === 1);
    expect(performance.now() - began).toBeGreaterThanOrEqual(100);
    expect(cut).toBe(1);
    expect(await r.metric("kinfer_gateway_requests_total", { code: "canceled" })).toBe(1);
    await until(() => r.fleet.abandoned[0] === 1);
    await r.expectIdle();
    // Pulling again afterwards ends the generator without another accounting.
    expect((await gen.next()).done).toBe(true);
    expect(r.pipeline.counts).toEqual({ accepted: 1, ended: 1 });
  });

  it("the slow-reader limit runs from when the event was handed over, not from the first one", async () => {
    const r = await rig({ config: { timeouts: { slowReaderMs: 300 } } });
    r.fleet.answer(0, (_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.write(sse(chunk("a"), chunk("b")));
    });
    let cutAt = 0;
    const gen = r.pipeline.run(request({ onSlowReader: () => (cutAt = performance.now()) }));
    await gen.next(); // start, held for 200 ms (under the limit)
    await new Promise((res) => setTimeout(res, 200));
    await gen.next(); // a delta, held from now on
    const heldFrom = performance.now();
    await until(() => cutAt > 0);
    // Cut one limit after this event was handed over (not at 300 ms from the start, nor later than 300 + slack).
    expect(cutAt - heldFrom).toBeGreaterThanOrEqual(280);
    expect(cutAt - heldFrom).toBeLessThan(480);
    await r.expectIdle();
  });

  it("a slow replica is not a slow reader: only the time the client holds an event counts", async () => {
    const r = await rig({ config: { timeouts: { slowReaderMs: 150 } } });
    r.fleet.answer(0, (_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.write(sse(chunk("a")));
      setTimeout(() => res.write(sse(chunk("b"))), 300);
      setTimeout(() => res.end(sse(finishChunk("stop"), "[DONE]")), 600);
    });
    let cut = 0;
    const { events, error } = await run(r, request({ onSlowReader: () => cut++ }));
    expect(error).toBeUndefined();
    expect(events.at(-1)?.type).toBe("finish");
    expect(cut).toBe(0);
  });

  it("the watch ends with the request: a client that stops at the finish is not cut afterwards", async () => {
    const r = await rig({ config: { timeouts: { slowReaderMs: 100 } } });
    r.fleet.answer(0, streamOf(["a"]));
    let cut = 0;
    for await (const e of r.pipeline.run(request({ onSlowReader: () => cut++ })))
      if (e.type === "finish") break;
    await new Promise((res) => setTimeout(res, 250));
    expect(cut).toBe(0);
  });

  it("runs without the optional hooks (tracer, rollout outcome, slow-reader callback)", async () => {
    const r = await rig({ bare: true, config: { timeouts: { slowReaderMs: 100 } } });
    r.fleet.answer(0, streamOf(["a"]));
    expect((await run(r)).error).toBeUndefined();
    r.fleet.answer(0, (_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.write(sse(chunk("a"), chunk("b")));
    });
    const gen = r.pipeline.run(request());
    await gen.next();
    await gen.next();
    await until(() => r.pipeline.counts.ended === 2);
    expect(r.spans).toEqual([]);
    expect(r.ended).toEqual([]);
    await r.expectIdle();
  });

  it("a client gone for a reason of its own is told CANCELED, 'the request was cancelled'", async () => {
    const r = await rig();
    r.fleet.answer(0, silence);
    const client = new AbortController();
    const outcome = run(r, request({ signal: client.signal }));
    await until(() => r.fleet.seen.length === 1);
    client.abort(new Error("socket hang up"));
    const { error } = await outcome;
    expect(error?.code).toBe(Code.Canceled);
    expect(error?.rawMessage).toBe("the request was cancelled");
    await r.expectIdle();
  });

  it("a reader slower than slowReaderMs in total, but never holding one event that long, is not cut", async () => {
    // 12 events held 50 ms each: twice the limit in all.
    const r = await rig({ config: { timeouts: { slowReaderMs: 300 } } });
    r.fleet.answer(0, streamOf(Array.from({ length: 10 }, (_, i) => String(i))));
    let cut = 0;
    const events: InferenceEvent[] = [];
    for await (const e of r.pipeline.run(request({ onSlowReader: () => cut++ }))) {
      events.push(e);
      await new Promise((res) => setTimeout(res, 50));
    }
    expect(events.at(-1)?.type).toBe("finish");
    expect(cut).toBe(0);
  });

  it("a client that leaves while its event is being written ends at once, without pulling again", async () => {
    const r = await rig();
    const held = heldStream();
    r.fleet.answer(0, held.answer);
    const client = new AbortController();
    const gen = r.pipeline.run(request({ signal: client.signal }));
    await gen.next(); // start
    await gen.next(); // the first delta, held by the consumer
    client.abort(new Error("socket closed"));
    await until(() => r.pipeline.counts.ended === 1);
    expect(r.spans[0]?.code).toBe(Code.Canceled);
    await r.expectIdle();
    expect((await gen.next()).done).toBe(true);
  });

  it("a client that leaves while it waits for a slot leaves the queue at once", async () => {
    const r = await rig({ config: { flow: { maxInFlightPerReplica: 1, criticalReserve: 0 } } });
    const held = heldStream();
    r.fleet.answer(0, held.answer);
    const first = r.pipeline.run(request());
    await first.next();
    const client = new AbortController();
    const waiting = run(r, request({ requestId: "req-2", signal: client.signal }));
    await until(() => r.pipeline.inFlight === 2);
    await new Promise((res) => setTimeout(res, 50));
    expect(r.fleet.seen).toHaveLength(1); // it waits
    expect(r.flow.snapshot()[0]?.tenants.map((t) => [t.tenant, t.queued])).toEqual([["", 1]]);
    client.abort(new Error("gone"));
    const { error } = await waiting;
    expect(error?.code).toBe(Code.Canceled);
    expect(r.pipeline.counts.ended).toBe(1);
    held.release();
    for await (const _ of first) {
    }
    expect(r.fleet.seen).toHaveLength(1);
    await r.expectIdle();
  });

  it("a request waits with its class, tenant and prompt bytes, and leaves before its deadline", async () => {
    const r = await rig({
      key: { priority: "standard" },
      config: { flow: { maxInFlightPerReplica: 1, criticalReserve: 0 } },
    });
    const held = heldStream();
    r.fleet.answer(0, held.answer);
    const first = r.pipeline.run(request({ credential: r.secret }));
    await first.next();
    const deadlineAt = performance.now() + 400;
    const began = performance.now();
    const waiting = run(r, request({ credential: r.secret, priority: "sheddable", deadlineAt }));
    await until(() => r.pipeline.inFlight === 2);
    const [queue] = r.flow.snapshot();
    expect(queue?.queued).toEqual({ critical: 0, standard: 0, sheddable: 1 });
    expect(queue?.queuedBytes).toBe(40);
    expect(queue?.tenants.map((t) => [t.tenant, t.queued])).toEqual([["acme", 1]]);
    const { error } = await waiting;
    expect(error?.code).toBe(Code.ResourceExhausted);
    expect(performance.now() - began).toBeLessThan(2000); // not flow.maxWaitMs (30 s)
    held.release();
    for await (const _ of first) {
    }
    await r.expectIdle();
  });

  it("a request that waited is routed on the table as it is when its slot comes (a replica that appeared)", async () => {
    const r = await rig({
      replicas: 2,
      routed: 1,
      config: {
        routing: { algorithm: "least-outstanding" },
        flow: { maxInFlightPerReplica: 1, criticalReserve: 0 },
      },
    });
    const held = heldStream();
    r.fleet.answer(0, held.answer);
    r.fleet.answer(1, streamOf(["new"]));
    const first = r.pipeline.run(request());
    await first.next();
    const waiting = run(r, request({ requestId: "req-2" }));
    await until(() => r.pipeline.inFlight === 2);
    r.addReplica(1);
    const { events, error } = await waiting;
    expect(error).toBeUndefined();
    expect(events.find((e) => e.type === "delta")).toMatchObject({ text: "new" });
    expect(r.spans.at(-1)?.queueWaitMs).toBeGreaterThan(0);
    held.release();
    for await (const _ of first) {
    }
    await r.expectIdle();
  });

  it("abortAll ends every request in flight with the drain's error", async () => {
    const r = await rig();
    r.fleet.answer(0, silence);
    const outcome = run(r);
    await until(() => r.fleet.seen.length === 1);
    r.pipeline.abortAll(new ConnectError("the gateway is shutting down", Code.Unavailable));
    const { error } = await outcome;
    expect(error?.code).toBe(Code.Unavailable);
    expect(error?.rawMessage).toBe("the gateway is shutting down");
    await r.expectIdle();
  });

  it("a bug below the pipeline is INTERNAL to the client, with a fixed message, and logged", async () => {
    const bug = new TypeError("a bug");
    const r = await rig({ attemptError: bug });
    r.fleet.answer(0, streamOf(["x"]));
    const { error } = await run(r);
    expect(error?.code).toBe(Code.Internal);
    expect(error?.rawMessage).toBe("internal error");
    expect(r.logs.find((l) => l.msg === "internal error")).toMatchObject({
      level: "error",
      fields: { err: bug, requestId: "req-1" },
    });
    expect(await r.metric("kinfer_gateway_requests_total", { code: "internal" })).toBe(1);
    await r.expectIdle();
  });
});
