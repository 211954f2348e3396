/**
 * OpenTelemetry traces (issue 23, part 3), exported to a real OpenTelemetry Collector (test/otel): every
 * surface's request (the openai npm client, Connect, grpc-js, the SDK) becomes a gateway span under the
 * client's W3C traceparent, with one child span per upstream attempt, and the simulated vLLM's own
 * llm_request span under that attempt (the replica got the attempt's traceparent). The gateway span says
 * the route taken; retries show as failed attempt spans; a client's sampling decision is kept; hostile
 * trace headers start a new trace and harm nothing; with tracing off the gateway passes the client's
 * context through; a collector that is down costs requests nothing.
 */
import { randomBytes } from "node:crypto";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { InferenceService } from "../../gen/es/kinfer/inference/v1/inference_pb.js";
import * as tsProto from "../../gen/grpc-js/kinfer/inference/v1/inference.js";
import { createKinferClient } from "../../sdk/src/client.js";
import { createNodeTransport } from "../../sdk/src/node.js";
import { freePort } from "../helpers/free-port.js";
import { type Harness, startHarness } from "../helpers/gateway-harness.js";
import { expectIdle } from "../helpers/idle.js";
import { postJson } from "../helpers/sse.js";
import { type Collector, type ReceivedSpan, startCollector } from "../otel/collector.js";

const MODEL = "qwen";
const SERVER = 2;
const CLIENT = 3;
const ERROR = 2;

let collector: Collector;
let h: Harness;

beforeAll(async () => {
  collector = await startCollector();
  h = await startHarness({
    models: { [MODEL]: { stable: 2 } },
    sim: { otlpTracesEndpoint: collector.endpoint },
    config: { tracing: { otlpEndpoint: collector.endpoint, batchDelayMs: 50 } },
  });
}, 300_000);
afterAll(async () => {
  await h?.close();
  await collector?.stop();
});

/** A client's span context: a new trace, sampled unless said otherwise. */
function clientContext(sampled = true) {
  const traceId = randomBytes(16).toString("hex");
  const spanId = randomBytes(8).toString("hex");
  return { traceId, spanId, traceparent: `00-${traceId}-${spanId}-${sampled ? "01" : "00"}` };
}

/** The gateway's span, its attempts and the replica's spans, once each attempt has its replica span. */
async function chainOf(traceId: string, attempts = 1) {
  const spans = await collector.trace(
    traceId,
    (s) =>
      s.filter((x) => x.service === "kinfer-gateway").length === 1 + attempts &&
      s.some((x) => x.service === "vllm"),
  );
  const gateway = spans.find((s) => s.service === "kinfer-gateway" && s.kind === SERVER) as ReceivedSpan;
  const upstream = spans.filter((s) => s.service === "kinfer-gateway" && s.kind === CLIENT);
  const replica = spans.filter((s) => s.service === "vllm");
  return { gateway, upstream, replica };
}

function expectChain(
  chain: Awaited<ReturnType<typeof chainOf>>,
  parentSpanId: string,
  protocol: string,
  operation: string,
) {
  const { gateway, upstream, replica } = chain;
  expect(gateway.parentSpanId).toBe(parentSpanId);
  expect(gateway.name).toBe(operation);
  expect(gateway.attributes).toMatchObject({
    "gen_ai.operation.name": operation,
    "gen_ai.request.model": MODEL,
    "kinfer.protocol": protocol,
    "kinfer.version": "stable",
    "kinfer.attempts": 1,
  });
  expect(h.all().map((r) => r.url)).toContain(gateway.attributes["kinfer.replica"]);
  expect(gateway.attributes["kinfer.queue_wait_ms"]).toBeGreaterThanOrEqual(0);
  expect(gateway.status).not.toBe(ERROR);
  expect(upstream).toHaveLength(1);
  expect(upstream[0]?.parentSpanId).toBe(gateway.spanId);
  expect(upstream[0]?.status).not.toBe(ERROR);
  expect(upstream[0]?.attributes["server.address"]).toBe(gateway.attributes["kinfer.replica"]);
  expect(replica).toHaveLength(1);
  expect(replica[0]?.parentSpanId).toBe(upstream[0]?.spanId);
  expect(replica[0]?.attributes["gen_ai.usage.prompt_tokens"]).toBe(
    gateway.attributes["gen_ai.usage.input_tokens"],
  );
}

it("every surface's request is a span under the client's, its attempt a child, the replica's span under the attempt", async () => {
  const messages = [{ role: "user" as const, content: "trace me" }];

  const viaOpenAi = clientContext();
  const openai = new OpenAI({ baseURL: `${h.url}/v1`, apiKey: "none" });
  const stream = await openai.chat.completions.create(
    { model: MODEL, messages, max_tokens: 6, stream: true },
    { headers: { traceparent: viaOpenAi.traceparent, tracestate: "vendor=opaque" } },
  );
  for await (const _ of stream);
  const openAiChain = await chainOf(viaOpenAi.traceId);
  expectChain(openAiChain, viaOpenAi.spanId, "openai", "chat");
  expect(openAiChain.gateway.attributes["kinfer.ttft_ms"]).toBeGreaterThan(0);
  expect(openAiChain.gateway.attributes["gen_ai.usage.output_tokens"]).toBe(6);

  const viaConnect = clientContext();
  const connect = createClient(
    InferenceService,
    createConnectTransport({ baseUrl: h.url, httpVersion: "2" }),
  );
  for await (const _ of connect.generate(
    { model: MODEL, prompt: "trace me", sampling: { maxTokens: 4 } },
    { headers: { traceparent: viaConnect.traceparent } },
  ));
  expectChain(await chainOf(viaConnect.traceId), viaConnect.spanId, "connect", "text_completion");

  const viaGrpc = clientContext();
  const grpcClient = new tsProto.InferenceServiceClient(
    h.url.replace("http://", ""),
    grpc.credentials.createInsecure(),
  );
  const metadata = new grpc.Metadata();
  metadata.set("traceparent", viaGrpc.traceparent);
  await new Promise<void>((resolve, reject) => {
    const call = grpcClient.chat(
      tsProto.ChatRequest.fromPartial({
        model: MODEL,
        messages: [{ role: tsProto.Role.ROLE_USER, content: "trace me" }],
        sampling: { maxTokens: 4 },
      }),
      metadata,
    );
    call.on("data", () => {});
    call.on("end", resolve);
    call.on("error", reject);
  });
  grpcClient.close();
  expectChain(await chainOf(viaGrpc.traceId), viaGrpc.spanId, "grpc", "chat");

  const viaSdk = clientContext();
  const sdk = createKinferClient({ transport: createNodeTransport({ baseUrl: h.url }) });
  const embedded = await sdk.embed(
    { model: MODEL, inputs: ["a", "b"] },
    { headers: { traceparent: viaSdk.traceparent } },
  );
  expect(embedded.embeddings).toHaveLength(2);
  expectChain(await chainOf(viaSdk.traceId), viaSdk.spanId, "grpc", "embeddings"); // the SDK speaks gRPC in Node
  await expectIdle(h);
});

it("attempts that fail are error spans under the request, and the request span says how it ended", async () => {
  await h.setFaults(h.all(), { status: 1, statusCode: 503 });
  try {
    const ctx = clientContext();
    const res = await postJson(
      `${h.url}/v1/completions`,
      { model: MODEL, prompt: "x", max_tokens: 2 },
      { headers: { traceparent: ctx.traceparent } },
    );
    expect(res.status).toBe(503);
    const spans = await collector.trace(ctx.traceId, (s) => s.some((x) => x.kind === SERVER));
    const gateway = spans.find((s) => s.kind === SERVER) as ReceivedSpan;
    const attempts = spans.filter((s) => s.kind === CLIENT && s.parentSpanId === gateway.spanId);
    // Retried on the other replica, both refused with 503 (the simulator's span begins after admission).
    expect(gateway.attributes["kinfer.attempts"]).toBe(2);
    expect(gateway.attributes["kinfer.code"]).toBe("Unavailable");
    expect(gateway.status).toBe(ERROR);
    expect(attempts).toHaveLength(2);
    expect(new Set(attempts.map((a) => a.attributes["server.address"])).size).toBe(2);
    for (const a of attempts) {
      expect(a.status).toBe(ERROR);
      expect(a.attributes["kinfer.failure"]).toBe("unavailable");
    }
  } finally {
    await h.setFaults(h.all(), { status: 0 });
  }
  await expectIdle(h);
});

it("a client's not-sampled decision is kept by the gateway and the replica", async () => {
  const unsampled = clientContext(false);
  const sampled = clientContext(true);
  const ask = (traceparent: string) =>
    postJson(
      `${h.url}/v1/completions`,
      { model: MODEL, prompt: "x", max_tokens: 2 },
      { headers: { traceparent } },
    );
  const first = await ask(unsampled.traceparent);
  expect(first.status).toBe(200);
  expect((await ask(sampled.traceparent)).status).toBe(200);
  // Spans leave in the order they end: once the later request's chain is in, the earlier one's would be.
  await chainOf(sampled.traceId);
  expect(collector.spans().filter((s) => s.traceId === unsampled.traceId)).toEqual([]);
  // Nor did the replica start a trace of its own for it: it was told the request is not sampled.
  const requestId = first.headers.get("x-request-id");
  expect(collector.spans().filter((s) => s.attributes["gen_ai.request.id"] === requestId)).toEqual([]);
});

it("malformed or hostile trace headers start a new trace and harm nothing", async () => {
  const hostile = [
    "00-zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-00f067aa0ba902b7-01",
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01", // all-zero trace id: invalid
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // version ff: invalid
    `00-${"a".repeat(32)}-${"b".repeat(16)}-01${"x".repeat(4000)}`,
    "",
  ];
  for (const traceparent of hostile) {
    const res = await postJson(
      `${h.url}/v1/completions`,
      { model: MODEL, prompt: "x", max_tokens: 2 },
      { headers: { traceparent, tracestate: "k=".repeat(2000) } },
    );
    expect(res.status, traceparent.slice(0, 40)).toBe(200);
    const requestId = res.headers.get("x-request-id");
    const span = await collector.span((s) => s.attributes["kinfer.request_id"] === requestId);
    expect(span.parentSpanId).toBe(""); // a root: the client's context was dropped
    expect(span.traceId).not.toBe("a".repeat(32));
  }
  await expectIdle(h);
});

describe("tracing off", () => {
  let plain: Harness;
  beforeAll(async () => {
    plain = await startHarness({
      models: { [MODEL]: { stable: 1 } },
      sim: { otlpTracesEndpoint: collector.endpoint },
    });
  });
  afterAll(() => plain?.close());

  it("the client's trace context goes to the replica as it came; a malformed one does not", async () => {
    const ctx = clientContext();
    const res = await postJson(
      `${plain.url}/v1/completions`,
      { model: MODEL, prompt: "x", max_tokens: 2 },
      { headers: { traceparent: ctx.traceparent } },
    );
    expect(res.status).toBe(200);
    const [replicaSpan] = await collector.trace(ctx.traceId, (s) => s.length > 0);
    expect(replicaSpan?.service).toBe("vllm");
    expect(replicaSpan?.parentSpanId).toBe(ctx.spanId);
    expect(collector.spans().filter((s) => s.traceId === ctx.traceId && s.service !== "vllm")).toEqual([]);

    const bad = await postJson(
      `${plain.url}/v1/completions`,
      { model: MODEL, prompt: "x", max_tokens: 2 },
      { headers: { traceparent: "00-zzzz-zzzz-01" } },
    );
    const requestId = bad.headers.get("x-request-id");
    const span = await collector.span((s) => s.attributes["gen_ai.request.id"] === requestId);
    expect(span.parentSpanId).toBe("");
    await expectIdle(plain);
  });
});

describe("collector down", () => {
  let orphan: Harness;
  beforeAll(async () => {
    const nowhere = `http://127.0.0.1:${await freePort()}`;
    orphan = await startHarness({
      models: { [MODEL]: { stable: 1 } },
      config: { tracing: { otlpEndpoint: nowhere, batchDelayMs: 10, maxQueueSize: 16 } },
    });
  });
  afterAll(() => orphan?.close());

  it("requests are served as ever and the gateway is idle after them", async () => {
    const results = await Promise.all(
      Array.from({ length: 40 }, () =>
        postJson(
          `${orphan.url}/v1/completions`,
          { model: MODEL, prompt: "x", max_tokens: 2 },
          { headers: { traceparent: clientContext().traceparent } },
        ).then((r) => r.status),
      ),
    );
    expect(results.every((s) => s === 200)).toBe(true);
    await expectIdle(orphan);
  });
});
