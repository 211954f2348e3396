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
import OpenAI from "openai";
import { afterAll, beforeAll, expect, it } from "vitest";
import { stringify } from "yaml";
import { InferenceService } from "../../gen/es/kinfer/inference/v1/inference_pb.js";
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
