/**
 * One prompt through every protocol the gateway speaks, with real clients: @grpc/grpc-js (ts-proto client
 * from gen/grpc-js), Connect over HTTP/2 and HTTP/1.1, gRPC-Web, `buf curl` with no schema (server
 * reflection), and the openai npm client. All must get the same tokens and the same usage.
 */
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus } from "../../gen/es/grpc/health/v1/health_pb.js";
import { InferenceService, Role } from "../../gen/es/kinfer/inference/v1/inference_pb.js";
import * as tsProto from "../../gen/grpc-js/kinfer/inference/v1/inference.js";
import { type Harness, startHarness } from "../helpers/gateway-harness.js";

const MODEL = "llama-3-8b";
const PROMPT = "Explain continuous batching in one paragraph.";
const SEED = 42;
const MAX_TOKENS = 12;

interface Result {
  text: string;
  promptTokens: number;
  completionTokens: number;
}

let h: Harness;
beforeAll(async () => {
  h = await startHarness({ models: { [MODEL]: { stable: 2 } } });
});
afterAll(() => h.close());

async function viaConnect(transport: ReturnType<typeof createConnectTransport>): Promise<Result> {
  const client = createClient(InferenceService, transport);
  let text = "";
  let usage = { promptTokens: 0, completionTokens: 0 };
  const events: string[] = [];
  for await (const res of client.generate({
    model: MODEL,
    prompt: PROMPT,
    sampling: { maxTokens: MAX_TOKENS, seed: BigInt(SEED) },
  })) {
    events.push(res.event.case ?? "");
    if (res.event.case === "delta") text += res.event.value.text;
    if (res.event.case === "finish") usage = res.event.value.usage ?? usage;
  }
  expect(events[0]).toBe("start");
  expect(events.at(-1)).toBe("finish");
  return { text, promptTokens: usage.promptTokens, completionTokens: usage.completionTokens };
}

function viaGrpcJs(): Promise<Result> {
  const client = new tsProto.InferenceServiceClient(
    h.gateway.url.replace("http://", ""),
    grpc.credentials.createInsecure(),
  );
  return new Promise((resolve, reject) => {
    const result: Result = { text: "", promptTokens: 0, completionTokens: 0 };
    const call = client.generate(
      tsProto.GenerateRequest.fromPartial({
        model: MODEL,
        prompt: PROMPT,
        sampling: { maxTokens: MAX_TOKENS, seed: BigInt(SEED) },
      }),
    );
    call.on("data", (res: tsProto.GenerateResponse) => {
      if (res.event?.$case === "delta") result.text += res.event.delta.text;
      if (res.event?.$case === "finish") {
        result.promptTokens = res.event.finish.usage?.promptTokens ?? 0;
        result.completionTokens = res.event.finish.usage?.completionTokens ?? 0;
      }
    });
    call.on("error", (err) => {
      client.close();
      reject(err);
    });
    call.on("end", () => {
      client.close();
      resolve(result);
    });
  });
}

/** buf curl in a child process (asynchronously: the gateway under test runs in this process). */
async function viaBufCurl(): Promise<Result> {
  const r = await promisify(execFile)(
    "npx",
    [
      "buf",
      "curl",
      "--http2-prior-knowledge",
      "--protocol",
      "grpc",
      "-d",
      JSON.stringify({
        model: MODEL,
        prompt: PROMPT,
        sampling: { maxTokens: MAX_TOKENS, seed: String(SEED) },
      }),
      `${h.gateway.url}/kinfer.inference.v1.InferenceService/Generate`,
    ],
    { encoding: "utf8", timeout: 30_000 },
  );
  expect(r.stderr).toBe("");
  // buf curl prints one JSON document per message.
  const messages = r.stdout
    .trim()
    .split(/\n(?=\{)/)
    .map((m) => JSON.parse(m));
  const finish = messages.at(-1).finish;
  return {
    text: messages.map((m) => m.delta?.text ?? "").join(""),
    promptTokens: finish.usage.promptTokens,
    completionTokens: finish.usage.completionTokens,
  };
}

async function viaOpenAi(): Promise<Result> {
  const client = new OpenAI({ baseURL: `${h.gateway.url}/v1`, apiKey: "unused", maxRetries: 0 });
  const stream = await client.completions.create({
    model: MODEL,
    prompt: PROMPT,
    max_tokens: MAX_TOKENS,
    seed: SEED,
    stream: true,
    stream_options: { include_usage: true },
  });
  const result: Result = { text: "", promptTokens: 0, completionTokens: 0 };
  for await (const chunk of stream) {
    result.text += chunk.choices[0]?.text ?? "";
    if (chunk.usage) {
      result.promptTokens = chunk.usage.prompt_tokens;
      result.completionTokens = chunk.usage.completion_tokens;
    }
  }
  return result;
}

describe("one prompt through every protocol", () => {
  it("gives the same tokens and usage to grpc-js, Connect (h2 and HTTP/1.1), gRPC-Web, buf curl and openai", async () => {
    const results = {
      connectH2: await viaConnect(createConnectTransport({ baseUrl: h.url, httpVersion: "2" })),
      connectH1: await viaConnect(createConnectTransport({ baseUrl: h.url, httpVersion: "1.1" })),
      grpcWeb: await viaConnect(createGrpcWebTransport({ baseUrl: h.url, httpVersion: "1.1" })),
      grpcJs: await viaGrpcJs(),
      bufCurl: await viaBufCurl(),
      openai: await viaOpenAi(),
    };
    const reference = results.connectH2;
    expect(reference.text.length).toBeGreaterThan(0);
    expect(reference.completionTokens).toBeGreaterThan(0);
    expect(reference.completionTokens).toBeLessThanOrEqual(MAX_TOKENS);
    expect(reference.promptTokens).toBeGreaterThan(0);
    for (const [name, r] of Object.entries(results)) expect(r, name).toEqual(reference);
    // Every protocol is counted under its own label.
    const metrics = await (await fetch(`${h.url}/metrics`)).text();
    for (const protocol of ["grpc", "grpc-web", "connect", "openai"]) {
      expect(metrics).toMatch(
        new RegExp(`kinfer_gateway_requests_total\\{[^}]*protocol="${protocol}"[^}]*code="ok"`),
      );
    }
  }, 60_000);

  it("streams chat the same way through Connect and the openai client", async () => {
    const client = createClient(
      InferenceService,
      createConnectTransport({ baseUrl: h.url, httpVersion: "2" }),
    );
    let viaConnectText = "";
    for await (const res of client.chat({
      model: MODEL,
      messages: [{ role: Role.USER, content: "Hi there" }],
      sampling: { maxTokens: 8, seed: 7n },
    })) {
      if (res.event.case === "delta") viaConnectText += res.event.value.text;
    }
    const openai = new OpenAI({ baseURL: `${h.url}/v1`, apiKey: "unused", maxRetries: 0 });
    const reply = await openai.chat.completions.create({
      model: MODEL,
      messages: [{ role: "user", content: "Hi there" }],
      max_tokens: 8,
      seed: 7,
    });
    expect(reply.choices[0]?.message.content).toBe(viaConnectText);
    expect(reply.usage?.completion_tokens).toBeGreaterThan(0);
  });
});

describe("Server-Timing", () => {
  const TIMING = /^gateway;dur=(\d+\.\d{3}), upstream;dur=(\d+\.\d{3});desc="replica to first token"$/;

  it("tells the gateway's time from the replica's, on OpenAI (streaming or not) and Connect responses", async () => {
    const headerOf = async (stream: boolean) => {
      const started = performance.now();
      const res = await fetch(`${h.url}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model: MODEL, prompt: PROMPT, max_tokens: 4, stream }),
      });
      const header = res.headers.get("server-timing") ?? "";
      await res.text();
      return { header, elapsed: performance.now() - started };
    };
    for (const stream of [true, false]) {
      const { header, elapsed } = await headerOf(stream);
      const m = TIMING.exec(header);
      expect(m, header).not.toBeNull();
      const [gateway, upstream] = [Number(m?.[1]), Number(m?.[2])];
      expect(upstream).toBeGreaterThan(0);
      expect(gateway).toBeGreaterThanOrEqual(0);
      expect(gateway + upstream).toBeLessThan(elapsed);
    }

    let connectHeader = "";
    const client = createClient(
      InferenceService,
      createConnectTransport({ baseUrl: h.url, httpVersion: "2" }),
    );
    for await (const _ of client.generate(
      { model: MODEL, prompt: PROMPT, sampling: { maxTokens: 4 } },
      { onHeader: (headers) => (connectHeader = headers.get("server-timing") ?? "") },
    ));
    expect(connectHeader).toMatch(TIMING);
  });
});

describe("operations", () => {
  it("lists models over Connect and OpenAI", async () => {
    const client = createClient(
      InferenceService,
      createConnectTransport({ baseUrl: h.url, httpVersion: "2" }),
    );
    const { models } = await client.listModels({});
    expect(models).toEqual([
      expect.objectContaining({ name: MODEL, versions: ["stable"], maxContextTokens: 8192, available: true }),
    ]);
    const openai = new OpenAI({ baseURL: `${h.url}/v1`, apiKey: "unused", maxRetries: 0 });
    expect((await openai.models.list()).data.map((m) => m.id)).toEqual([MODEL]);
  });

  it("answers grpc.health.v1 Check, /healthz and /readyz", async () => {
    const health = createClient(Health, createConnectTransport({ baseUrl: h.url, httpVersion: "2" }));
    expect((await health.check({ service: "" })).status).toBe(HealthCheckResponse_ServingStatus.SERVING);
    expect((await health.check({ service: "kinfer.inference.v1.InferenceService" })).status).toBe(
      HealthCheckResponse_ServingStatus.SERVING,
    );
    await expect(health.check({ service: "nope" })).rejects.toThrow(/unknown service/);
    expect((await fetch(`${h.url}/healthz`)).status).toBe(200);
    expect((await fetch(`${h.url}/readyz`)).status).toBe(200);
  });

  it("exports per-replica state and signals on /metrics", async () => {
    await h.gateway.scrapeNow();
    const text = await (await fetch(`${h.url}/metrics`)).text();
    expect(text).toMatch(
      /kinfer_gateway_replica_state\{model="llama-3-8b",version="stable",replica="[^"]+",state="ready"\} 1/,
    );
    expect(text).toMatch(/kinfer_gateway_replica_kv_cache_usage\{/);
    expect(text).toMatch(/kinfer_gateway_time_to_first_token_seconds_bucket\{le="0.001",model="llama-3-8b"/);
    expect(text).toMatch(/process_cpu_seconds_total/);
  });
});
