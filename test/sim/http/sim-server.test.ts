/**
 * A simulated replica over real HTTP: the official openai client, vLLM's SSE framing chunk by chunk,
 * vLLM-shaped errors for bad input (and an unharmed process after them), health, faults and cancellation.
 */
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type SimServer, startSimServer } from "../../../sim/http/sim-server.js";
import { postJson, readSseData } from "../../helpers/sse.js";

const MODEL = "llama-3-8b";
let replica: SimServer;
let openai: OpenAI;

beforeAll(async () => {
  replica = await startSimServer({ model: MODEL, engine: { maxModelLen: 4096 } });
  openai = new OpenAI({ baseURL: `${replica.url}/v1`, apiKey: "unused", maxRetries: 0 });
});
afterAll(() => replica.close());

const chatBody = (extra: Record<string, unknown> = {}) => ({
  model: MODEL,
  messages: [{ role: "user", content: "Tell me about GPUs." }],
  max_tokens: 8,
  ignore_eos: true,
  stream: true,
  stream_options: { include_usage: true },
  ...extra,
});

async function metric(name: string, labels = ""): Promise<number> {
  const text = await replica.metricsText();
  const line = text.split("\n").find((l) => l.startsWith(`${name}{`) && l.includes(labels));
  return line === undefined ? 0 : Number(line.split(" ").at(-1));
}

describe("the openai npm client", () => {
  it("streams a chat completion and reads its usage", async () => {
    const stream = await openai.chat.completions.create({
      model: MODEL,
      messages: [{ role: "user", content: "Hello!" }],
      max_tokens: 12,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = "";
    let contentChunks = 0;
    let usage: OpenAI.CompletionUsage | undefined | null;
    let finish: string | null | undefined;
    for await (const chunk of stream) {
      const delta = chunk.choices[0]?.delta.content;
      if (delta) {
        text += delta;
        contentChunks++;
      }
      finish ??= chunk.choices[0]?.finish_reason;
      if (chunk.usage) usage = chunk.usage;
    }
    expect(text.length).toBeGreaterThan(0);
    expect(usage?.completion_tokens).toBeGreaterThanOrEqual(contentChunks);
    expect(usage?.completion_tokens).toBeLessThanOrEqual(12);
    expect(usage?.prompt_tokens).toBeGreaterThan(5);
    expect(usage?.total_tokens).toBe((usage?.prompt_tokens ?? 0) + (usage?.completion_tokens ?? 0));
    expect(["stop", "length"]).toContain(finish);
  });

  it("streams a text completion and reads its usage", async () => {
    const stream = await openai.completions.create({
      model: MODEL,
      prompt: "Once upon a time",
      max_tokens: 10,
      stream: true,
      stream_options: { include_usage: true },
      // vLLM's extension, passed through by the client as an extra body field.
      ...({ ignore_eos: true } as object),
    });
    let text = "";
    let usage: OpenAI.CompletionUsage | undefined | null;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.text ?? "";
      if (chunk.usage) usage = chunk.usage;
    }
    expect(usage?.completion_tokens).toBe(10);
    expect(usage?.prompt_tokens).toBe(4); // "Once", " upon", " a", " time"
    expect(text.length).toBeGreaterThan(10);
  });

  it("answers non-streaming requests and lists the model", async () => {
    const chat = await openai.chat.completions.create({
      model: MODEL,
      messages: [{ role: "user", content: "Hi" }],
      max_tokens: 5,
      seed: 3,
    });
    expect(chat.object).toBe("chat.completion");
    expect(chat.choices[0]?.message.role).toBe("assistant");
    expect(chat.usage?.completion_tokens).toBeLessThanOrEqual(5);
    const models = await openai.models.list();
    expect(models.data.map((m) => m.id)).toEqual([MODEL]);
  });

  it("gives the same output for the same seed", async () => {
    const ask = () =>
      openai.completions
        .create({ model: MODEL, prompt: "Seeded", max_tokens: 20, seed: 1234 })
        .then((r) => r.choices[0]?.text);
    expect(await ask()).toBe(await ask());
  });
});

describe("SSE framing, chunk by chunk as vLLM sends it", () => {
  it("chat: role chunk, content chunks, finish chunk, usage chunk, [DONE]", async () => {
    const res = await postJson(`${replica.url}/v1/chat/completions`, chatBody());
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toMatch(/^text\/event-stream/);
    const data = await readSseData(res);
    expect(data.at(-1)).toBe("[DONE]");
    const chunks = data.slice(0, -1).map((d) => JSON.parse(d));
    expect(chunks).toHaveLength(1 + 8 + 1 + 1);
    const [role, ...rest] = chunks;
    const usage = rest.pop();
    const finish = rest.pop();
    for (const c of chunks) {
      expect(c).toMatchObject({
        id: role.id,
        object: "chat.completion.chunk",
        created: role.created,
        model: MODEL,
      });
    }
    expect(role.id).toMatch(/^chatcmpl-/);
    expect(role.choices).toEqual([
      { index: 0, delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null },
    ]);
    for (const c of rest) {
      expect(Object.keys(c.choices[0])).toEqual(["index", "delta", "logprobs", "finish_reason"]);
      expect(c.choices[0].delta).toEqual({ content: expect.any(String) });
      expect(c.choices[0].finish_reason).toBeNull();
    }
    expect(finish.choices).toEqual([
      { index: 0, delta: { content: "" }, logprobs: null, finish_reason: "length", stop_reason: null },
    ]);
    expect(usage.choices).toEqual([]);
    expect(usage.usage).toMatchObject({ completion_tokens: 8, total_tokens: usage.usage.prompt_tokens + 8 });
    expect(usage.usage.prompt_tokens_details).toEqual({ cached_tokens: expect.any(Number) });
  });

  it("chat without include_usage: no usage chunk", async () => {
    const data = await readSseData(
      await postJson(`${replica.url}/v1/chat/completions`, chatBody({ stream_options: null })),
    );
    const chunks = data.slice(0, -1).map((d) => JSON.parse(d));
    expect(chunks.every((c) => c.usage === undefined)).toBe(true);
    expect(chunks.at(-1).choices[0].finish_reason).toBe("length");
  });

  it("completions: text chunks with usage null, finish chunk, usage chunk, [DONE]", async () => {
    const res = await postJson(`${replica.url}/v1/completions`, {
      model: MODEL,
      prompt: "Count:",
      max_tokens: 4,
      ignore_eos: true,
      stream: true,
      stream_options: { include_usage: true },
    });
    const data = await readSseData(res);
    expect(data.at(-1)).toBe("[DONE]");
    const chunks = data.slice(0, -1).map((d) => JSON.parse(d));
    expect(chunks).toHaveLength(4 + 1 + 1);
    for (const c of chunks.slice(0, 4)) {
      expect(c).toMatchObject({ object: "text_completion", model: MODEL, usage: null });
      expect(c.id).toMatch(/^cmpl-/);
      expect(c.choices).toEqual([
        { index: 0, text: expect.any(String), logprobs: null, finish_reason: null, stop_reason: null },
      ]);
    }
    expect(chunks[4].choices[0]).toMatchObject({ text: "", finish_reason: "length" });
    expect(chunks[5]).toMatchObject({ choices: [], usage: { completion_tokens: 4 } });
  });

  it("a stop string ends the stream with finish_reason stop and stop_reason", async () => {
    const full = await postJson(`${replica.url}/v1/completions`, {
      model: MODEL,
      prompt: "x",
      max_tokens: 30,
      seed: 9,
      ignore_eos: true,
    });
    const text = ((await full.json()) as { choices: { text: string }[] }).choices[0]?.text ?? "";
    const stop = text.slice(10, 14);
    const res = await postJson(`${replica.url}/v1/completions`, {
      model: MODEL,
      prompt: "x",
      max_tokens: 30,
      seed: 9,
      ignore_eos: true,
      stop: [stop],
      stream: true,
    });
    const chunks = (await readSseData(res)).slice(0, -1).map((d) => JSON.parse(d));
    expect(chunks.map((c) => c.choices[0].text).join("")).toBe(text.slice(0, text.indexOf(stop)));
    expect(chunks.at(-1).choices[0]).toMatchObject({ finish_reason: "stop", stop_reason: stop });
  });
});

describe("bad input gets vLLM's error shape and harms nothing", () => {
  const cases: [string, string, unknown, number, RegExp][] = [
    ["malformed JSON", "/v1/chat/completions", "{not json", 400, /Invalid JSON/],
    ["a wrong type", "/v1/chat/completions", { ...chatBody(), max_tokens: "ten" }, 400, /max_tokens/],
    ["missing messages", "/v1/chat/completions", { model: MODEL }, 400, /messages/],
    [
      "empty messages",
      "/v1/chat/completions",
      { model: MODEL, messages: [] },
      400,
      /messages must not be empty/,
    ],
    [
      "a bad role",
      "/v1/chat/completions",
      { model: MODEL, messages: [{ role: "robot", content: "x" }] },
      400,
      /role/,
    ],
    ["missing prompt", "/v1/completions", { model: MODEL }, 400, /prompt/],
    [
      "an out-of-range temperature",
      "/v1/completions",
      { model: MODEL, prompt: "x", temperature: 9 },
      400,
      /temperature/,
    ],
    ["n > 1", "/v1/completions", { model: MODEL, prompt: "x", n: 2 }, 400, /n=1/],
    [
      "an unknown model",
      "/v1/completions",
      { model: "gpt-9", prompt: "x" },
      404,
      /The model `gpt-9` does not exist/,
    ],
    ["a JSON array body", "/v1/completions", [1, 2], 400, /body/],
    [
      "a prompt plus max_tokens over max_model_len",
      "/v1/completions",
      { model: MODEL, prompt: "word ".repeat(3000), max_tokens: 2000 },
      400,
      /maximum context length is 4096 tokens/,
    ],
    [
      "a 10 MB prompt",
      "/v1/completions",
      { model: MODEL, prompt: "a".repeat(10 * 1024 * 1024) },
      400,
      /maximum context length/,
    ],
  ];

  it.each(cases)("%s", async (_, path, body, status, message) => {
    const res = await postJson(`${replica.url}${path}`, body);
    expect(res.status).toBe(status);
    const json = (await res.json()) as {
      error: { message: string; type: string; code: number; param: null };
    };
    expect(json.error.code).toBe(status);
    expect(json.error.type).toBe(status === 404 ? "NotFoundError" : "BadRequestError");
    expect(json.error.message).toMatch(message);
    expect(json.error.param).toBeNull();
  });

  it("a body over the size limit gets 413, and the replica keeps serving", async () => {
    const small = await startSimServer({ model: MODEL, maxBodyBytes: 1024 });
    try {
      const res = await postJson(`${small.url}/v1/completions`, { model: MODEL, prompt: "a".repeat(4096) });
      expect(res.status).toBe(413);
      const ok = await postJson(`${small.url}/v1/completions`, {
        model: MODEL,
        prompt: "fine",
        max_tokens: 2,
      });
      expect(ok.status).toBe(200);
    } finally {
      await small.close();
    }
  });

  it("unknown routes get 404", async () => {
    expect((await fetch(`${replica.url}/v2/anything`)).status).toBe(404);
  });

  it("still serves normally afterwards, with nothing left running", async () => {
    const res = await postJson(`${replica.url}/v1/chat/completions`, chatBody());
    expect((await readSseData(res)).at(-1)).toBe("[DONE]");
    expect(replica.engine.stats()).toMatchObject({ running: 0, waiting: 0, kvCacheUsage: 0 });
  });
});

describe("health", () => {
  it("answers 503 during the start-up delay, then 200", async () => {
    const slow = await startSimServer({ model: MODEL, startupDelayMs: 300 });
    try {
      expect((await fetch(`${slow.url}/health`)).status).toBe(503);
      expect((await postJson(`${slow.url}/v1/completions`, { model: MODEL, prompt: "x" })).status).toBe(503);
      await new Promise((r) => setTimeout(r, 350));
      expect((await fetch(`${slow.url}/health`)).status).toBe(200);
    } finally {
      await slow.close();
    }
  });

  it("answers 503 while draining or marked unhealthy, and refuses new requests", async () => {
    expect((await fetch(`${replica.url}/health`)).status).toBe(200);
    await postJson(`${replica.url}/sim/drain`, { draining: true });
    expect((await fetch(`${replica.url}/health`)).status).toBe(503);
    const refused = await postJson(`${replica.url}/v1/chat/completions`, chatBody());
    expect(refused.status).toBe(503);
    expect(((await refused.json()) as { error: { type: string } }).error.type).toBe(
      "ServiceUnavailableError",
    );
    await postJson(`${replica.url}/sim/drain`, { draining: false });
    await postJson(`${replica.url}/sim/health`, { healthy: false });
    expect((await fetch(`${replica.url}/health`)).status).toBe(503);
    await postJson(`${replica.url}/sim/health`, { healthy: true });
    expect((await fetch(`${replica.url}/health`)).status).toBe(200);
  });

  it("rejects bad control input by name", async () => {
    const res = await postJson(`${replica.url}/sim/drain`, { drain: true });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: { message: string } }).error.message).toMatch(/drain/);
  });
});

describe("faults by request header", () => {
  const withFault = (fault: string, extra: Record<string, unknown> = {}) =>
    postJson(`${replica.url}/v1/chat/completions`, chatBody(extra), { headers: { "x-sim-fault": fault } });

  it("refuse: the connection is reset", async () => {
    await expect(withFault("refuse")).rejects.toThrow();
  });

  it("status: an HTTP error before the first token, with Retry-After", async () => {
    const res = await withFault("status=503,retry-after=2");
    expect(res.status).toBe(503);
    expect(res.headers.get("retry-after")).toBe("2");
    expect(((await res.json()) as { error: { code: number } }).error.code).toBe(503);
    expect((await withFault("status=429")).status).toBe(429);
  });

  it("error-after: vLLM's in-band error event after n tokens, then [DONE]", async () => {
    const res = await withFault("error-after=3");
    expect(res.status).toBe(200);
    const data = await readSseData(res);
    expect(data.at(-1)).toBe("[DONE]");
    const events = data.slice(0, -1).map((d) => JSON.parse(d));
    expect(
      events.filter((e) => e.choices?.[0]?.delta?.content !== undefined && !e.choices[0].delta.role),
    ).toHaveLength(3);
    expect(events.at(-1)).toEqual({
      error: { message: expect.any(String), type: "InternalServerError", param: null, code: 500 },
    });
    expect(events.some((e) => e.choices?.[0]?.finish_reason)).toBe(false);
  });

  it("drop-after: the connection breaks after n tokens, without finish or [DONE]", async () => {
    const res = await withFault("drop-after=3");
    const received: string[] = [];
    const { createParser } = await import("eventsource-parser");
    const parser = createParser({ onEvent: (e) => received.push(e.data) });
    await expect(
      (async () => {
        for await (const chunk of res.body as AsyncIterable<Uint8Array>)
          parser.feed(new TextDecoder().decode(chunk));
      })(),
    ).rejects.toThrow();
    expect(received).not.toContain("[DONE]");
    expect(received.length).toBeLessThanOrEqual(4); // the role chunk and at most 3 tokens
  });

  it("stall: nothing arrives for the stall time", async () => {
    const started = performance.now();
    const res = await withFault("stall=300");
    expect(performance.now() - started).toBeGreaterThanOrEqual(295);
    expect((await readSseData(res)).at(-1)).toBe("[DONE]");
  });

  it("slow: tokens come slower by the factor", async () => {
    const timeStream = async (fault?: string) => {
      const res = await postJson(`${replica.url}/v1/chat/completions`, chatBody({ max_tokens: 20 }), {
        headers: fault ? { "x-sim-fault": fault } : {},
      });
      const started = performance.now();
      await readSseData(res);
      return performance.now() - started;
    };
    const normal = await timeStream();
    const slow = await timeStream("slow=4");
    expect(slow / normal).toBeGreaterThan(2.5);
  });

  it("an unknown directive is a 400 that names it", async () => {
    const res = await withFault("explode");
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: { message: string } }).error.message).toMatch(
      /unknown directive "explode"/,
    );
  });
});

describe("fault rates at run time", () => {
  it("POST /sim/faults changes them; bad keys are rejected by name", async () => {
    const set = await postJson(`${replica.url}/sim/faults`, { status: 1, statusCode: 429 });
    expect(((await set.json()) as { status: number }).status).toBe(1);
    for (let i = 0; i < 3; i++) {
      expect((await postJson(`${replica.url}/v1/chat/completions`, chatBody())).status).toBe(429);
    }
    await postJson(`${replica.url}/sim/faults`, { status: 0 });
    const ok = await postJson(`${replica.url}/v1/chat/completions`, chatBody());
    expect(ok.status).toBe(200);
    expect((await readSseData(ok)).at(-1)).toBe("[DONE]");
    const bad = await postJson(`${replica.url}/sim/faults`, { sttus: 1 });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { error: { message: string } }).error.message).toMatch(/sttus/);
    expect((await postJson(`${replica.url}/sim/faults`, { refuse: 2 })).status).toBe(400);
  });
});

describe("cancellation", () => {
  it("a client that disconnects aborts its sequence at once and frees its KV blocks", async () => {
    expect(replica.engine.stats()).toMatchObject({ running: 0, waiting: 0 });
    const abortsBefore = await metric("vllm:request_success_total", 'finished_reason="abort"');
    const controller = new AbortController();
    const res = await postJson(`${replica.url}/v1/chat/completions`, chatBody({ max_tokens: 2000 }), {
      signal: controller.signal,
    });
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    await reader.read(); // the stream has begun
    expect(replica.engine.stats().running).toBe(1);
    const cancelledAt = performance.now();
    controller.abort();
    let elapsed = Number.POSITIVE_INFINITY;
    while (performance.now() - cancelledAt < 2000) {
      if ((await metric("vllm:request_success_total", 'finished_reason="abort"')) === abortsBefore + 1) {
        elapsed = performance.now() - cancelledAt;
        break;
      }
      await new Promise((r) => setTimeout(r, 5));
    }
    expect(elapsed).toBeLessThan(200);
    expect(await metric("vllm:num_requests_running")).toBe(0);
    expect(await metric("vllm:kv_cache_usage_perc")).toBe(0);
  });
});

describe("continuous usage stats", () => {
  it("every chunk carries the usage so far when stream_options.continuous_usage_stats is set, as vLLM's do", async () => {
    const res = await postJson(
      `${replica.url}/v1/chat/completions`,
      chatBody({ stream_options: { include_usage: true, continuous_usage_stats: true } }),
    );
    const chunks = (await readSseData(res)).filter((d) => d !== "[DONE]").map((d) => JSON.parse(d));
    const usages = chunks.map((c) => c.usage as { prompt_tokens: number; completion_tokens: number });
    expect(usages.every((u) => u !== undefined && u !== null)).toBe(true);
    const prompt = usages[0]?.prompt_tokens ?? 0;
    expect(prompt).toBeGreaterThan(0);
    expect(usages.every((u) => u.prompt_tokens === prompt)).toBe(true);
    // Role chunk 0, then one more per content chunk, then the finish and usage chunks at the total.
    expect(usages.map((u) => u.completion_tokens)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 8, 8]);
  });
});
