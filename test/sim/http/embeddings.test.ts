/**
 * The simulator's /v1/embeddings over real HTTP, read by the official openai client (float and base64),
 * with vLLM's errors for bad input, and the engine's work visible in its metrics.
 */
import OpenAI from "openai";
import { afterAll, beforeAll, expect, it } from "vitest";
import { embed } from "../../../sim/embedding/embeddings.js";
import { type SimServer, startSimServer } from "../../../sim/http/sim-server.js";
import { tokenize } from "../../../sim/text/tokenizer.js";
import { postJson } from "../../helpers/sse.js";

const MODEL = "bge-m3";
const SIZE = 256;
let replica: SimServer;
let openai: OpenAI;

beforeAll(async () => {
  replica = await startSimServer({ model: MODEL, engine: { maxModelLen: 512, embeddingSize: SIZE } });
  openai = new OpenAI({ baseURL: `${replica.url}/v1`, apiKey: "unused", maxRetries: 0 });
});
afterAll(() => replica.close());

const cosine = (a: readonly number[], b: readonly number[]) =>
  a.reduce((s, x, i) => s + x * (b[i] as number), 0);

it("embeds a batch: unit vectors of the model's size, equal inputs equal, related inputs closer, usage counted", async () => {
  const inputs = [
    "GPUs serve language models.",
    "GPUs serve language models.",
    "GPUs serve models.",
    "Bananas are yellow.",
  ];
  const res = await openai.embeddings.create({ model: MODEL, input: inputs, encoding_format: "float" });
  expect(res.object).toBe("list");
  expect(res.model).toBe(MODEL);
  expect(res.data.map((d) => d.index)).toEqual([0, 1, 2, 3]);
  const [a, b, c, d] = res.data.map((x) => x.embedding) as [number[], number[], number[], number[]];
  expect(a).toHaveLength(SIZE);
  expect(cosine(a, a)).toBeCloseTo(1, 5);
  expect(b).toEqual(a);
  expect(cosine(a, c)).toBeGreaterThan(cosine(a, d) + 0.2);
  const tokens = inputs.reduce((n, t) => n + tokenize(t).length, 0);
  // vLLM's usage carries completion_tokens 0 for a pooling request.
  expect(res.usage).toEqual({ prompt_tokens: tokens, total_tokens: tokens, completion_tokens: 0 });
  // The engine ran the prefills: the replica's prompt-token counter moved by the inputs' tokens.
  const prompt = (await replica.metricsText())
    .split("\n")
    .find((l) => l.startsWith("vllm:prompt_tokens_total{"));
  expect(Number(prompt?.split(" ").at(-1))).toBeGreaterThanOrEqual(tokens);
});

it("base64 is the float32 little-endian bytes of the same vector; dimensions shortens it (renormalised)", async () => {
  const text = "Tell me about GPUs.";
  const raw = await postJson(`${replica.url}/v1/embeddings`, {
    model: MODEL,
    input: text,
    encoding_format: "base64",
  });
  expect(raw.status).toBe(200);
  const b64 = ((await raw.json()) as { data: { embedding: string }[] }).data[0]?.embedding as string;
  const bytes = Buffer.from(b64, "base64");
  const decoded = Array.from({ length: bytes.length / 4 }, (_, i) => bytes.readFloatLE(i * 4));
  expect(decoded).toEqual(Array.from(embed(tokenize(text), SIZE)));
  // The openai client asks for base64 by default and decodes it itself.
  const viaClient = await openai.embeddings.create({ model: MODEL, input: text });
  expect(viaClient.data[0]?.embedding).toEqual(decoded);
  const short = await openai.embeddings.create({
    model: MODEL,
    input: text,
    dimensions: 64,
    encoding_format: "float",
  });
  expect(short.data[0]?.embedding).toHaveLength(64);
  expect(cosine(short.data[0]?.embedding ?? [], short.data[0]?.embedding ?? [])).toBeCloseTo(1, 5);
});

it("token-id inputs are embedded as given", async () => {
  const ids = tokenize("token ids in");
  const res = await openai.embeddings.create({
    model: MODEL,
    input: [ids, ids.slice(0, 2)],
    encoding_format: "float",
  });
  expect(res.data[0]?.embedding).toEqual(Array.from(embed(ids, SIZE)));
  expect(res.usage.prompt_tokens).toBe(ids.length + 2);
});

it("bad input gets vLLM's errors and harms nothing", async () => {
  const post = (body: unknown) => postJson(`${replica.url}/v1/embeddings`, body);
  const cases: [unknown, number, RegExp][] = [
    [{ model: MODEL }, 400, /input/],
    [{ model: MODEL, input: [] }, 400, /input/],
    [{ model: MODEL, input: "" }, 400, /empty/],
    [{ model: MODEL, input: "x", encoding_format: "int8" }, 400, /encoding_format/],
    [{ model: MODEL, input: "x", dimensions: SIZE + 1 }, 400, /Dimensions/],
    [{ model: MODEL, input: "word ".repeat(600) }, 400, /maximum context length/],
    [{ model: "other", input: "x" }, 404, /does not exist/],
  ];
  for (const [body, status, message] of cases) {
    const res = await post(body);
    expect(res.status, JSON.stringify(body).slice(0, 80)).toBe(status);
    expect(((await res.json()) as { error: { message: string } }).error.message).toMatch(message);
  }
  const bad = await fetch(`${replica.url}/v1/embeddings`, { method: "POST", body: "{not json" });
  expect(bad.status).toBe(400);
  // Long inputs are cut to their last tokens when asked, as vLLM's truncate_prompt_tokens does.
  const cut = await post({ model: MODEL, input: "word ".repeat(600), truncate_prompt_tokens: 100 });
  expect(((await cut.json()) as { usage: { prompt_tokens: number } }).usage.prompt_tokens).toBe(100);
  // -1 cuts to the context length: the whole context is allowed (vLLM refuses only more than max_model_len).
  const whole = await post({ model: MODEL, input: "word ".repeat(600), truncate_prompt_tokens: -1 });
  expect(whole.status).toBe(200);
  expect(((await whole.json()) as { usage: { prompt_tokens: number } }).usage.prompt_tokens).toBe(512);
  const ok = await openai.embeddings.create({ model: MODEL, input: "still fine" });
  expect(ok.data).toHaveLength(1);
});
