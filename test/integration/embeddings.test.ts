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
import { afterAll, beforeAll, describe, expect, it } from "vitest";
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

describe("bounded answers", () => {
  // Two vectors of SIZE float32s fit; three do not.
  const LIMIT = 2 * SIZE * 4;
  let small: Harness;
  beforeAll(async () => {
    small = await startHarness({
      models: { [MODEL]: { stable: 2 }, big: { stable: 1 } },
      engine: { embeddingSize: SIZE },
      modelEngine: { big: { embeddingSize: 4096 } },
      // One failure held against a replica would eject it: the test shows none is.
      config: { limits: { maxEmbeddingBytes: LIMIT }, ejection: { consecutiveFailures: 1 } },
    });
  });
  afterAll(() => small?.close());

  const worked = () => small.all().map((r) => r.engine.stats().promptTokens);
  const post = (body: unknown) => postJson(`${small.url}/v1/embeddings`, body);
  const tooLarge = async (res: Response) => {
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: { message: string } }).error.message).toMatch(/fewer inputs/);
  };

  it("an answer larger than limits.maxEmbeddingBytes is a 400: cut while it arrives the first time, refused before any replica works after, never retried or held against a replica", async () => {
    const page = () => small.gateway.metrics.registry.metrics();
    const before = await page();
    const inputs = (n: number) => Array.from({ length: n }, (_, i) => `t${i}`);
    // Size not yet known: one replica computes the answer; the gateway stops reading it at what 2 vectors
    // take, sees from the first vector that 60 of them are too many, and tries no other replica.
    let counts = worked();
    await tooLarge(await post({ model: MODEL, input: inputs(60) }));
    expect(worked().filter((n, i) => n !== counts[i])).toHaveLength(1);
    // A single vector longer than the whole bound (4,096 floats): known too large from its first bytes.
    counts = worked();
    await tooLarge(await post({ model: "big", input: ["a"] }));
    expect(worked().filter((n, i) => n !== counts[i])).toHaveLength(1);
    const after = await page();
    const delta = (name: string) => metricSum(after, name) - metricSum(before, name);
    expect(delta("kinfer_gateway_retries_total")).toBe(0);
    expect(delta("kinfer_gateway_ejections_total")).toBe(0); // one failure held against a replica ejects it here
    // The first answer taught the gateway the model's size: a larger request reaches no replica, on every
    // surface, and neither does one whose `dimensions` say it is too large.
    counts = worked();
    await tooLarge(await post({ model: MODEL, input: inputs(3) }));
    const viaConnect = await createClient(
      InferenceService,
      createConnectTransport({ baseUrl: small.url, httpVersion: "2" }),
    )
      .embed({ model: MODEL, inputs: inputs(3) })
      .catch((e: unknown) => e);
    expect(ConnectError.from(viaConnect).code).toBe(Code.InvalidArgument);
    await tooLarge(await post({ model: "big", input: ["a"], dimensions: 1024 }));
    expect(worked()).toEqual(counts);
    // Within the bound: answered.
    expect((await post({ model: MODEL, input: inputs(2) })).status).toBe(200);
    expect((await post({ model: MODEL, input: inputs(3), dimensions: SIZE / 2 })).status).toBe(200);
    await expectIdle(small);
  });
});

describe("slow readers", () => {
  // Its own gateway: the test watches its connection count, which no other client may share.
  let slow: Harness;
  beforeAll(async () => {
    slow = await startHarness({
      models: { big: { stable: 1 } },
      engine: { embeddingSize: 4096 },
      config: { timeouts: { slowReaderMs: 500 } },
    });
  });
  afterAll(() => slow?.close());

  it("an OpenAI client that stops reading a large answer is cut after slowReaderMs; the gateway is idle", async () => {
    // 400 vectors of 4,096 floats: about 36 MB of JSON, far past what the sockets buffer.
    const body = JSON.stringify({ model: "big", input: Array.from({ length: 400 }, (_, i) => `text ${i}`) });
    let received = 0;
    let response: http.IncomingMessage | undefined;
    const complete = new Promise<boolean>((resolve) => {
      const req = http.request(`${slow.url}/v1/embeddings`, {
        method: "POST",
        headers: { "content-type": "application/json" },
      });
      req.on("error", () => resolve(false));
      req.on("response", (res) => {
        response = res;
        res.on("data", (chunk: Buffer) => {
          if (received === 0) res.pause(); // the first bytes, then nothing
          received += chunk.length;
        });
        res.on("end", () => resolve(res.complete));
        res.on("error", () => resolve(false));
        res.on("aborted", () => resolve(false));
      });
      req.end(body);
    });
    await waitFor(() => received > 0, "the answer's first bytes", 20_000);
    expect(response?.statusCode).toBe(200);
    // The gateway gives up on the client, without any read of ours to notice it, and is idle...
    await waitFor(() => slow.gateway.connections === 0, "the client's connection cut", 10_000);
    // ...and the client, reading again, finds its answer cut short.
    response?.resume();
    expect(await complete).toBe(false);
    expect(received).toBeLessThan(30_000_000);
    await expectIdle(slow);
  });
});
