/**
 * Usage exact on every surface (issue 23, part 4): what the replica counted (its own vllm:*_tokens_total
 * counters, an oracle independent of the stream) is what each client is shown, what the tenant is charged
 * and what the gateway's token metrics count: for streams that finish (with cached prompt tokens), for
 * streams that fail after their first token, and for streams the client cancels.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import OpenAI from "openai";
import { afterAll, beforeAll, expect, it } from "vitest";
import { stringify } from "yaml";
import { InferenceService, Role } from "../../gen/es/kinfer/inference/v1/inference_pb.js";
import * as tsProto from "../../gen/grpc-js/kinfer/inference/v1/inference.js";
import { createKinferClient } from "../../sdk/src/client.js";
import { createNodeTransport } from "../../sdk/src/node.js";
import { newKey } from "../../server/tenants/key-store.js";
import { type Harness, startHarness } from "../helpers/gateway-harness.js";
import { expectIdle, metricSum } from "../helpers/idle.js";

const MODEL = "m";
const key = newKey({ tenant: "billed", limits: { tokensPerMinute: 10_000_000 } });
let h: Harness;
let dir: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "kinfer-usage-"));
  const keysFile = join(dir, "keys.yaml");
  writeFileSync(keysFile, stringify({ keys: [key.record] }));
  // One replica: its counters are the whole truth. Slow steps, so that a cancel lands mid-stream.
  h = await startHarness({
    models: { [MODEL]: { stable: 1 } },
    engine: { decodeBaseMs: 20 },
    config: { tenants: { keysFile } },
  });
});
afterAll(async () => {
  await h?.close();
  rmSync(dir, { recursive: true, force: true });
});

/** Counter totals at the replica (its /metrics) and at the gateway, to compare before and after. */
async function counters() {
  const replica = await (h.all()[0] as { metricsText(): Promise<string> }).metricsText();
  const gateway = await h.gateway.metrics.registry.metrics();
  const gatewayKind = (kind: string) =>
    gateway
      .split("\n")
      .filter((l) => l.startsWith("kinfer_gateway_tokens_total{") && l.includes(`kind="${kind}"`))
      .reduce((n, l) => n + Number(l.split(" ").at(-1)), 0);
  return {
    replicaPrompt: metricSum(replica, "vllm:prompt_tokens_total"),
    replicaGenerated: metricSum(replica, "vllm:generation_tokens_total"),
    replicaCached: metricSum(replica, "vllm:prefix_cache_hits_total"),
    charged: metricSum(gateway, "kinfer_gateway_tenant_tokens_total"),
    prompt: gatewayKind("prompt"),
    completion: gatewayKind("completion"),
    cached: gatewayKind("cached"),
  };
}
const diff = (a: Awaited<ReturnType<typeof counters>>, b: typeof a) =>
  Object.fromEntries(
    Object.keys(a).map((k) => [k, b[k as keyof typeof a] - a[k as keyof typeof a]]),
  ) as typeof a;

const LONG_PROMPT = "The same long system prompt, reused by every request of this test. ".repeat(20);

it("a stream that finishes: the client, the tenant and the metrics see the replica's usage, cached tokens included", async () => {
  const openai = new OpenAI({ baseURL: `${h.url}/v1`, apiKey: key.secret, maxRetries: 0 });
  const ask = async () => {
    const stream = await openai.chat.completions.create({
      model: MODEL,
      messages: [{ role: "user", content: LONG_PROMPT }],
      max_tokens: 7,
      stream: true,
      stream_options: { include_usage: true },
    });
    let usage: OpenAI.CompletionUsage | undefined | null;
    for await (const chunk of stream) usage = chunk.usage ?? usage;
    return usage;
  };
  await ask(); // fills the prefix cache
  const before = await counters();
  const usage = await ask();
  const d = diff(before, await counters());
  expect(usage?.prompt_tokens).toBe(d.replicaPrompt);
  expect(usage?.completion_tokens).toBe(d.replicaGenerated);
  expect(usage?.prompt_tokens_details?.cached_tokens).toBe(d.replicaCached);
  expect(d.replicaCached).toBeGreaterThan(0);
  expect(d).toMatchObject({
    charged: d.replicaPrompt + d.replicaGenerated,
    prompt: d.replicaPrompt,
    completion: d.replicaGenerated,
    cached: d.replicaCached,
  });
  await expectIdle(h);
});

it("every surface shows the replica's usage for a finished stream (Connect, grpc-js, the SDK, the Responses API)", async () => {
  const auth = { authorization: `Bearer ${key.secret}` };
  const messages = [{ role: Role.USER, content: LONG_PROMPT }];
  type Shown = { prompt: number; completion: number; cached: number };
  const surfaces: [string, () => Promise<Shown>][] = [
    [
      "connect",
      async () => {
        const client = createClient(
          InferenceService,
          createConnectTransport({ baseUrl: h.url, httpVersion: "2" }),
        );
        let shown: Shown | undefined;
        for await (const res of client.chat(
          { model: MODEL, messages, sampling: { maxTokens: 6 } },
          { headers: auth },
        ))
          if (res.event.case === "finish") {
            const u = res.event.value.usage;
            shown = {
              prompt: u?.promptTokens ?? -1,
              completion: u?.completionTokens ?? -1,
              cached: u?.cachedTokens ?? -1,
            };
          }
        return shown as Shown;
      },
    ],
    [
      "grpc-js",
      () =>
        new Promise<Shown>((resolve, reject) => {
          const client = new tsProto.InferenceServiceClient(
            h.url.replace("http://", ""),
            grpc.credentials.createInsecure(),
          );
          const metadata = new grpc.Metadata();
          metadata.set("authorization", auth.authorization);
          let shown: Shown | undefined;
          const call = client.chat(
            tsProto.ChatRequest.fromPartial({
              model: MODEL,
              messages: [{ role: tsProto.Role.ROLE_USER, content: LONG_PROMPT }],
              sampling: { maxTokens: 6 },
            }),
            metadata,
          );
          call.on("data", (e: tsProto.ChatResponse) => {
            if (e.event?.$case === "finish") {
              const u = e.event.finish.usage;
              shown = {
                prompt: u?.promptTokens ?? -1,
                completion: u?.completionTokens ?? -1,
                cached: u?.cachedTokens ?? -1,
              };
            }
          });
          call.on("end", () => {
            client.close();
            resolve(shown as Shown);
          });
          call.on("error", reject);
        }),
    ],
    [
      "sdk",
      async () => {
        const sdk = createKinferClient({
          transport: createNodeTransport({ baseUrl: h.url }),
          apiKey: key.secret,
        });
        const u = (await sdk.chat({ model: MODEL, messages, sampling: { maxTokens: 6 } }).collect()).finish
          ?.usage;
        return {
          prompt: u?.promptTokens ?? -1,
          completion: u?.completionTokens ?? -1,
          cached: u?.cachedTokens ?? -1,
        };
      },
    ],
    [
      "responses",
      async () => {
        const openai = new OpenAI({ baseURL: `${h.url}/v1`, apiKey: key.secret, maxRetries: 0 });
        const r = await openai.responses.create({ model: MODEL, input: LONG_PROMPT, max_output_tokens: 6 });
        return {
          prompt: r.usage?.input_tokens ?? -1,
          completion: r.usage?.output_tokens ?? -1,
          cached: r.usage?.input_tokens_details.cached_tokens ?? -1,
        };
      },
    ],
  ];
  for (const [surface, ask] of surfaces) {
    await ask(); // fills the prefix cache with this surface's prompt
    const before = await counters();
    const shown = await ask();
    const d = diff(before, await counters());
    expect(d.replicaCached, surface).toBeGreaterThan(0);
    expect(shown, surface).toEqual({
      prompt: d.replicaPrompt,
      completion: d.replicaGenerated,
      cached: d.replicaCached,
    });
    expect(d.charged, surface).toBe(d.replicaPrompt + d.replicaGenerated);
    expect(d.cached, surface).toBe(d.replicaCached);
  }
  await expectIdle(h);
});

it("a stream that fails after its first tokens: charged and counted as the replica counted it", async () => {
  const [replica] = h.all();
  if (replica === undefined) throw new Error("no replica");
  await h.setFaults([replica], { errorMidStream: 1, afterTokens: 5 });
  const before = await counters();
  const client = createClient(InferenceService, createConnectTransport({ baseUrl: h.url, httpVersion: "2" }));
  let received = 0;
  try {
    for await (const res of client.generate(
      { model: MODEL, prompt: LONG_PROMPT, sampling: { maxTokens: 50 } },
      { headers: { authorization: `Bearer ${key.secret}` } },
    ))
      if (res.event.case === "delta") received += res.event.value.tokenCount;
    throw new Error("the stream should have failed");
  } catch (err) {
    expect(String(err)).toMatch(/failed during generation/);
  } finally {
    await h.setFaults([replica], { errorMidStream: 0 });
  }
  await expectIdle(h);
  const d = diff(before, await counters());
  // The replica sent 5 tokens (its engine had made a 6th, never sent, when the fault struck).
  expect(received).toBe(5);
  expect(d.replicaGenerated).toBeGreaterThanOrEqual(5);
  expect(d).toMatchObject({
    charged: d.replicaPrompt + 5,
    prompt: d.replicaPrompt,
    completion: 5,
  });
});

it("a stream the client cancels: charged its prompt exactly and the tokens the replica reported", async () => {
  const before = await counters();
  const client = createClient(InferenceService, createConnectTransport({ baseUrl: h.url, httpVersion: "2" }));
  const control = new AbortController();
  let received = 0;
  try {
    for await (const res of client.generate(
      { model: MODEL, prompt: `${LONG_PROMPT} cancelled`, sampling: { maxTokens: 500 } },
      { headers: { authorization: `Bearer ${key.secret}` }, signal: control.signal },
    )) {
      if (res.event.case === "delta") received += res.event.value.tokenCount;
      if (received >= 4) control.abort();
    }
  } catch {
    // cancelled
  }
  await expectIdle(h);
  const d = diff(before, await counters());
  // The prompt as the replica counted it, not an estimate; the tokens the gateway had read from it: at
  // least those the client got, at most those the replica generated.
  expect(d.prompt).toBe(d.replicaPrompt);
  expect(d.completion).toBeGreaterThanOrEqual(received);
  expect(d.completion).toBeLessThanOrEqual(d.replicaGenerated);
  expect(d.charged).toBe(d.prompt + d.completion);
});
