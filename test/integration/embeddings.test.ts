/**
 * Embeddings through the gateway (issue 23): POST /v1/embeddings read by the openai npm client (float and
 * base64), InferenceService.Embed through grpc-js, Connect and the SDK. Every surface must get the vectors
 * the replica computed (the simulator's are deterministic: sim/embedding) and the replica's usage, charged
 * to the tenant and counted in the metrics. A replica that fails before answering is retried on another;
 * bad input is refused with a typed error before any replica sees it; a client that leaves mid-request
 * leaves the gateway idle.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import * as http from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import OpenAI from "openai";
import { afterAll, beforeAll, expect, it } from "vitest";
import { stringify } from "yaml";
import { InferenceService } from "../../gen/es/kinfer/inference/v1/inference_pb.js";
import * as tsProto from "../../gen/grpc-js/kinfer/inference/v1/inference.js";
import { createKinferClient } from "../../sdk/src/client.js";
import { createNodeTransport } from "../../sdk/src/node.js";
import { newKey } from "../../server/tenants/key-store.js";
import { embed } from "../../sim/embedding/embeddings.js";
import { tokenize } from "../../sim/text/tokenizer.js";
import { type Harness, startHarness } from "../helpers/gateway-harness.js";
import { expectIdle, metricSum, waitFor } from "../helpers/idle.js";
import { postJson } from "../helpers/sse.js";

const MODEL = "bge-m3";
const SIZE = 128;
const INPUTS = ["GPUs serve language models.", "Bananas are yellow.", "Kubernetes schedules pods."];
const key = newKey({ tenant: "searcher", limits: { tokensPerMinute: 10_000_000 } });
let h: Harness;
let dir: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "kinfer-embed-"));
  const keysFile = join(dir, "keys.yaml");
  writeFileSync(keysFile, stringify({ keys: [key.record] }));
  h = await startHarness({
    models: { [MODEL]: { stable: 2 } },
    engine: { embeddingSize: SIZE },
    config: { tenants: { keysFile } },
  });
});
afterAll(async () => {
  await h?.close();
  rmSync(dir, { recursive: true, force: true });
});

const expected = (text: string) => Array.from(embed(tokenize(text), SIZE));
const promptTokens = INPUTS.reduce((n, t) => n + tokenize(t).length, 0);
const auth = { authorization: `Bearer ${key.secret}` };

it("the openai npm client gets the replica's vectors and usage, as floats and as base64", async () => {
  const openai = new OpenAI({ baseURL: `${h.url}/v1`, apiKey: key.secret, maxRetries: 0 });
  const floats = await openai.embeddings.create({ model: MODEL, input: INPUTS, encoding_format: "float" });
  expect(floats.object).toBe("list");
  expect(floats.model).toBe(MODEL);
  expect(floats.data.map((d) => d.embedding)).toEqual(INPUTS.map(expected));
  expect(floats.usage).toMatchObject({ prompt_tokens: promptTokens, total_tokens: promptTokens });
  // The client's default: base64, decoded by the client.
  const b64 = await openai.embeddings.create({ model: MODEL, input: INPUTS[0] as string });
  expect(b64.data[0]?.embedding).toEqual(expected(INPUTS[0] as string));
  const short = await openai.embeddings.create({
    model: MODEL,
    input: "x y z",
    dimensions: 16,
    encoding_format: "float",
  });
  expect(short.data[0]?.embedding).toHaveLength(16);
});

it("grpc-js, Connect and the SDK get the same vectors, usage and the version that served them", async () => {
  const viaConnect = await createClient(
    InferenceService,
    createConnectTransport({ baseUrl: h.url, httpVersion: "2" }),
  ).embed({ model: MODEL, inputs: INPUTS }, { headers: auth });
  expect(viaConnect.embeddings.map((e) => e.values)).toEqual(INPUTS.map(expected));
  expect(viaConnect.usage?.promptTokens).toBe(promptTokens);
  expect(viaConnect.version).toBe("stable");
  expect(viaConnect.requestId).not.toBe("");

  const sdk = createKinferClient({ transport: createNodeTransport({ baseUrl: h.url }), apiKey: key.secret });
  const viaSdk = await sdk.embed({ model: MODEL, inputs: INPUTS });
  expect(viaSdk.embeddings.map((e) => e.values)).toEqual(INPUTS.map(expected));

  const client = new tsProto.InferenceServiceClient(
    h.url.replace("http://", ""),
    grpc.credentials.createInsecure(),
  );
  const metadata = new grpc.Metadata();
  metadata.set("authorization", auth.authorization);
  const viaGrpc = await new Promise<tsProto.EmbedResponse>((resolve, reject) =>
    client.embed(tsProto.EmbedRequest.fromPartial({ model: MODEL, inputs: INPUTS }), metadata, (err, res) =>
      err ? reject(err) : resolve(res),
    ),
  );
  client.close();
  expect(viaGrpc.embeddings.map((e) => e.values)).toEqual(INPUTS.map(expected));
  expect(viaGrpc.usage?.promptTokens).toBe(promptTokens);
});

it("usage is charged to the tenant and counted in the gateway's metrics, as the replica reported it", async () => {
  const page = () => h.gateway.metrics.registry.metrics();
  const before = await page();
  const res = await postJson(`${h.url}/v1/embeddings`, { model: MODEL, input: INPUTS }, { headers: auth });
  expect(res.status).toBe(200);
  const replicaUsage = ((await res.json()) as { usage: { prompt_tokens: number } }).usage.prompt_tokens;
  expect(replicaUsage).toBe(promptTokens);
  const after = await page();
  const delta = (name: string) => metricSum(after, name) - metricSum(before, name);
  expect(delta("kinfer_gateway_tenant_tokens_total")).toBe(promptTokens);
  expect(delta("kinfer_gateway_tokens_total")).toBe(promptTokens);
  await expectIdle(h);
});

it("a replica that fails before answering is retried on another: every request answered", async () => {
  const [bad, good] = h.replicas.get(`${MODEL}/stable`) ?? [];
  if (bad === undefined || good === undefined) throw new Error("two replicas expected");
  await h.setFaults([bad], { status: 1, statusCode: 500 });
  try {
    for (let i = 0; i < 10; i++) {
      const res = await postJson(
        `${h.url}/v1/embeddings`,
        { model: MODEL, input: `request ${i}` },
        { headers: auth },
      );
      expect(res.status).toBe(200);
    }
  } finally {
    await h.setFaults([bad], { status: 0 });
  }
  await expectIdle(h);
});

it("bad input gets a typed error and reaches no replica", async () => {
  const served = () => h.all().reduce((n, r) => n + r.engine.stats().promptTokens, 0);
  const before = served();
  const cases: [unknown, RegExp][] = [
    [{ model: MODEL }, /input/],
    [{ model: MODEL, input: [] }, /input must not be empty/],
    [{ model: MODEL, input: ["ok", ""] }, /empty strings/],
    [{ model: MODEL, input: [[1, 2, 3]] }, /token-id inputs are not supported/],
    [{ model: MODEL, input: "x", encoding_format: "int8" }, /encoding_format/],
    [{ model: MODEL, input: "x", dimensions: 0 }, /dimensions/],
    [{ model: MODEL, input: "x", stream: true }, /stream/],
    [{ model: MODEL, input: Array.from({ length: 2049 }, () => "x") }, /at most 2048/],
    [{ model: "nope", input: "x" }, /nope/],
  ];
  for (const [body, message] of cases) {
    const res = await postJson(`${h.url}/v1/embeddings`, body, { headers: auth });
    expect([400, 404], JSON.stringify(body).slice(0, 60)).toContain(res.status);
    expect(((await res.json()) as { error: { message: string } }).error.message).toMatch(message);
  }
  const unauthenticated = await postJson(`${h.url}/v1/embeddings`, { model: MODEL, input: "x" });
  expect(unauthenticated.status).toBe(401);
  const grpcBad = await createClient(
    InferenceService,
    createConnectTransport({ baseUrl: h.url, httpVersion: "2" }),
  )
    .embed({ model: MODEL, inputs: [] }, { headers: auth })
    .catch((e: unknown) => e);
  expect(ConnectError.from(grpcBad).code).toBe(Code.InvalidArgument);
  expect(served()).toBe(before);
  await expectIdle(h);
});

it("a client that leaves before the answer leaves the gateway idle, the replica's work stopped", async () => {
  // A slow replica step, so that the request is surely in the engine when the client leaves.
  await Promise.all(h.all().map((r) => postJson(`${r.url}/sim/slowdown`, { factor: 200 })));
  try {
    const body = JSON.stringify({
      model: MODEL,
      input: Array.from({ length: 50 }, (_, i) => `text ${i} `.repeat(40)),
    });
    const req = http.request(`${h.url}/v1/embeddings`, {
      method: "POST",
      headers: { "content-type": "application/json", ...auth },
    });
    req.on("error", () => {});
    req.end(body);
    await waitFor(
      () => h.all().some((r) => r.engine.stats().running + r.engine.stats().waiting > 0),
      "the request in an engine",
    );
    req.destroy();
    await expectIdle(h);
  } finally {
    await Promise.all(h.all().map((r) => postJson(`${r.url}/sim/slowdown`, { factor: 1 })));
  }
});
