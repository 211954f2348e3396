/**
 * One embeddings call to a replica (upstream-embeddings.ts): the body sent, the answer's checks and decoding,
 * error statuses, the bound on what is read, and reading the size of an answer's first vector from its
 * first bytes (the relay tells an answer too large for its bound, the request's doing, from a replica that
 * sends too much).
 */
import { Agent } from "undici";
import { afterEach, describe, expect, it } from "vitest";
import {
  AnswerTooLarge,
  answerBytesBound,
  embeddingsBody,
  fetchEmbeddings,
  firstVectorSize,
} from "../../../server/relay/upstream-embeddings.js";
import { UpstreamError } from "../../../server/relay/upstream-stream.js";
import type { InferenceRequest } from "../../../server/request/inference-request.js";
import { waitFor } from "../../helpers/idle.js";
import { type Answer, silence, startScriptedFleet } from "../../helpers/scripted-fleet.js";

const b64 = (floats: number) => Buffer.alloc(floats * 4, 7).toString("base64");

it("reads the first vector's length, exactly when it is complete and as a lower bound when it is cut", () => {
  for (const n of [1, 2, 3, 128, 4096]) {
    const text = `{"object":"list","data":[{"object":"embedding","index":0,"embedding":"${b64(n)}"},{"index":1`;
    expect(firstVectorSize(text)).toEqual({ size: n, exact: true });
  }
  const whole = b64(4096);
  const cut = `{"data":[{"embedding":"${whole.slice(0, 1000)}`;
  const partial = firstVectorSize(cut);
  expect(partial?.exact).toBe(false);
  expect(partial?.size).toBeLessThanOrEqual(4096);
  expect(partial?.size).toBe(Math.floor(Math.floor((1000 * 3) / 4) / 4));
  // A replica that ignored encoding_format and sent floats.
  expect(firstVectorSize('{"data":[{"embedding":[0.1, -0.2, 3e-5],"index":0}]')).toEqual({
    size: 3,
    exact: true,
  });
  expect(firstVectorSize('{"data":[{"embedding":[0.1,-0.2,0.3')).toEqual({ size: 2, exact: false });
  // Nothing to go by: no vector has begun, or base64 that is not float32.
  expect(firstVectorSize('{"data":[{"object":"embedding","ind')).toBeUndefined();
  expect(firstVectorSize('{"data":[{"embedding":"AAA="}]}')).toBeUndefined();
  expect(firstVectorSize('{"data":[{"embedding":[]}]}')).toBeUndefined();
});

it("bounds the body by what the vectors take in base64, plus framing", () => {
  const vectors = 2 * 128 * 4;
  const body = JSON.stringify({
    object: "list",
    data: [0, 1].map((index) => ({ object: "embedding", index, embedding: b64(128) })),
    usage: { prompt_tokens: 9, total_tokens: 9 },
  });
  expect(body.length).toBeLessThanOrEqual(answerBytesBound(2, vectors));
  expect(answerBytesBound(2, vectors)).toBeLessThan(body.length + 8192);
});

/** fetchEmbeddings against a scripted replica: what it sends, and each answer it must refuse or accept. */
describe("fetchEmbeddings", () => {
  const cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0)) await c();
  });

  async function replica(answer: Answer) {
    const fleet = await startScriptedFleet(1);
    const agent = new Agent();
    cleanups.push(async () => {
      await agent.destroy();
      await fleet.close();
    });
    fleet.answer(0, answer);
    const fetch = (inputs: number, maxVectorBytes = 1 << 20, signal = new AbortController().signal) =>
      fetchEmbeddings(
        fleet.urls[0] as string,
        '{"model":"e"}',
        inputs,
        "req-9",
        signal,
        agent,
        maxVectorBytes,
        { traceparent: "00-t" },
      );
    return { fleet, fetch };
  }
  const json =
    (body: unknown, code = 200, headers: Record<string, string> = {}): Answer =>
    (_req, res) => {
      res.writeHead(code, { "content-type": "application/json", ...headers });
      res.end(typeof body === "string" ? body : JSON.stringify(body));
    };
  const vec = (...xs: number[]) => Buffer.from(new Float32Array(xs).buffer).toString("base64");
  /** The failure a fetch ends with: its class and detail. */
  const failure = async (p: Promise<unknown>) => {
    try {
      await p;
      return "answered";
    } catch (err) {
      return err instanceof UpstreamError ? `${err.failure}: ${err.detail}` : String(err);
    }
  };

  it("posts the body to /v1/embeddings with the request's id and trace, and decodes base64 and float vectors in index order", async () => {
    const { fleet, fetch } = await replica(
      json({
        data: [
          { index: 1, embedding: [0.5, -2] },
          { index: 0, embedding: vec(1.5, 3) },
        ],
        usage: { prompt_tokens: 4 },
      }),
    );
    const answer = await fetch(2);
    expect(answer.vectors.map((v) => [...v])).toEqual([
      [1.5, 3],
      [0.5, -2],
    ]);
    expect(answer.promptTokens).toBe(4);
    const [seen] = fleet.seen;
    expect(seen?.path).toBe("/v1/embeddings");
    expect(seen?.body).toEqual({ model: "e" });
    expect(seen?.headers).toMatchObject({
      "content-type": "application/json",
      "x-request-id": "req-9",
      traceparent: "00-t",
    });
  });

  it("refuses every answer that is not vLLM's shape, as a protocol failure naming what is wrong", async () => {
    const ok = { index: 0, embedding: vec(1, 2) };
    const cases: [unknown, string][] = [
      ["{not json", "not JSON"],
      [{ usage: { prompt_tokens: 1 } }, "not 1 vectors"],
      [{ data: [ok, { index: 1, embedding: vec(1, 2) }], usage: { prompt_tokens: 1 } }, "not 1 vectors"],
      [{ data: [{ index: -1, embedding: vec(1) }], usage: { prompt_tokens: 1 } }, "an index out of range"],
      [{ data: [{ index: 1, embedding: vec(1) }], usage: { prompt_tokens: 1 } }, "an index out of range"],
      [{ data: [{ index: 0.5, embedding: vec(1) }], usage: { prompt_tokens: 1 } }, "an index out of range"],
      [{ data: [{ index: "0", embedding: vec(1) }], usage: { prompt_tokens: 1 } }, "an index out of range"],
      [{ data: [null], usage: { prompt_tokens: 1 } }, "an index out of range"],
      [
        { data: [{ index: 0, embedding: "AAA=" }], usage: { prompt_tokens: 1 } },
        "a base64 vector that is not float32",
      ],
      [
        { data: [{ index: 0, embedding: [1, "2"] }], usage: { prompt_tokens: 1 } },
        "a vector that is neither base64 nor numbers",
      ],
      [
        { data: [{ index: 0, embedding: { a: 1 } }], usage: { prompt_tokens: 1 } },
        "a vector that is neither base64 nor numbers",
      ],
      [{ data: [{ index: 0, embedding: [] }], usage: { prompt_tokens: 1 } }, "vectors of different lengths"],
      [{ data: [ok] }, "no usage.prompt_tokens"],
      [{ data: [ok], usage: { prompt_tokens: -1 } }, "no usage.prompt_tokens"],
      [{ data: [ok], usage: { prompt_tokens: 1.5 } }, "no usage.prompt_tokens"],
      [{ data: [ok], usage: { prompt_tokens: "1" } }, "no usage.prompt_tokens"],
    ];
    for (const [body, why] of cases) {
      const { fetch } = await replica(json(body));
      expect(await failure(fetch(1)), JSON.stringify(body)).toBe(`protocol: embeddings answer: ${why}`);
    }
    const two = (a: unknown, b: unknown) => ({ data: [a, b], usage: { prompt_tokens: 0 } });
    const twice = await replica(json(two(ok, { ...ok })));
    expect(await failure(twice.fetch(2))).toBe("protocol: embeddings answer: an index twice");
    const uneven = await replica(json(two(ok, { index: 1, embedding: vec(1) })));
    expect(await failure(uneven.fetch(2))).toBe("protocol: embeddings answer: vectors of different lengths");
    // Zero prompt tokens are an answer (a cached prompt).
    const zero = await replica(json({ data: [ok], usage: { prompt_tokens: 0 } }));
    expect((await zero.fetch(1)).promptTokens).toBe(0);
  });

  it("classifies error statuses as a stream's are, with retry-after, and bounds the error body it reads", async () => {
    const cases: [number, string, Record<string, string>, string][] = [
      [503, "loading", { "retry-after": "7" }, "unavailable"],
      [429, "busy", {}, "overloaded"],
      [404, "The model `e` does not exist.", {}, "not-found"],
      [400, "This model's maximum context length is 512 tokens", {}, "context-length"],
    ];
    for (const [code, message, headers, want] of cases) {
      const { fetch } = await replica(json({ message }, code, headers));
      const err = await fetch(1).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(UpstreamError);
      expect((err as UpstreamError).failure).toBe(want);
      expect((err as UpstreamError).detail).toContain(`HTTP ${code}: {"message":`);
      expect((err as UpstreamError).retryAfterMs).toBe(code === 503 ? 7000 : undefined);
    }
    for (const bad of ["0", "-3", "soon"]) {
      const { fetch } = await replica(json({}, 503, { "retry-after": bad }));
      expect(((await fetch(1).catch((e: unknown) => e)) as UpstreamError).retryAfterMs).toBeUndefined();
    }
    // An error body longer than 64 KiB is not read on: the replica sent more than an error takes.
    const { fetch } = await replica(json("x".repeat(64 * 1024 + 1), 500));
    expect(await failure(fetch(1))).toBe("protocol: the answer is larger than 65536 bytes");
    const { fetch: atBound } = await replica(json("x".repeat(64 * 1024), 500));
    expect(((await atBound(1).catch((e: unknown) => e)) as UpstreamError).failure).toBe("unavailable");
    // Only its first 300 characters go into the failure's detail.
    const { fetch: long } = await replica(json("y".repeat(1000), 500));
    expect(((await long(1).catch((e: unknown) => e)) as UpstreamError).detail).toBe(
      `HTTP 500: ${"y".repeat(300)}`,
    );
  });

  it("vectors past the bound: AnswerTooLarge with their size when the answer is read whole or its first vector shows it", async () => {
    // Read whole: 2 vectors of 4 floats = 32 bytes, over a bound of 31 (at 32 it is an answer).
    const body = {
      data: [0, 1].map((index) => ({ index, embedding: vec(1, 2, 3, 4) })),
      usage: { prompt_tokens: 2 },
    };
    const { fetch } = await replica(json(body));
    const err = await fetch(2, 31).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AnswerTooLarge);
    expect((err as AnswerTooLarge).vectorSize).toBe(4);
    expect((err as AnswerTooLarge).detail).toBe("32 bytes of vectors, more than 31");
    expect((await fetch(2, 32)).vectors).toHaveLength(2);
    // Cut while read: the first vector (4,096 floats) shows that 2 of them pass 1 KiB.
    const big = {
      data: [0, 1].map((index) => ({ index, embedding: b64(4096) })),
      usage: { prompt_tokens: 2 },
    };
    const { fetch: cut } = await replica(json(big));
    const tooLarge = await cut(2, 1024).catch((e: unknown) => e);
    expect(tooLarge).toBeInstanceOf(AnswerTooLarge);
    expect((tooLarge as AnswerTooLarge).vectorSize).toBe(4096);
    expect((tooLarge as AnswerTooLarge).detail).toBe("2 vectors of 4096 floats, more than 1024 bytes");
    // A body past the bound whose vectors do not show it (padding before them): the replica's fault.
    const padded = `{"pad":"${"p".repeat(8192)}","data":[{"index":0,"embedding":"${vec(1)}"}],"usage":{"prompt_tokens":1}}`;
    const { fetch: junk } = await replica(json(padded));
    const protocol = await junk(1, 4).catch((e: unknown) => e);
    expect(protocol).not.toBeInstanceOf(AnswerTooLarge);
    expect((protocol as UpstreamError).failure).toBe("protocol");
    // A first vector cut mid-way is a lower bound: AnswerTooLarge without a size to learn.
    const huge = { data: [{ index: 0, embedding: b64(300_000) }], usage: { prompt_tokens: 1 } };
    const { fetch: partial } = await replica(json(huge));
    const lower = (await partial(1, 4096).catch((e: unknown) => e)) as AnswerTooLarge;
    expect(lower).toBeInstanceOf(AnswerTooLarge);
    expect(lower.vectorSize).toBe(0);
    expect(lower.detail).toMatch(/^1 vectors of at least \d+ floats, more than 4096 bytes$/);
  });

  it("a refused connection is 'connect'; a body cut short is 'broken-stream'; an abort is the caller's reason", async () => {
    const { fleet, fetch } = await replica(json({}));
    await fleet.stop(0);
    expect(await failure(fetch(1))).toMatch(/^connect: /);
    const { fetch: cut } = await replica((_req, res) => {
      res.writeHead(200, { "content-type": "application/json", "content-length": "1000" });
      res.write('{"data":[');
      setTimeout(() => res.destroy(), 20);
    });
    expect(await failure(cut(1))).toMatch(/^broken-stream: /);
    const { fleet: slow, fetch: wait } = await replica(silence);
    const client = new AbortController();
    const left = new Error("the client left");
    const pending = wait(1, 1024, client.signal).catch((e: unknown) => e);
    await until(() => slow.seen.length === 1);
    client.abort(left);
    expect(await pending).toBe(left);
    // Aborted while the body is read.
    const { fleet: trickle, fetch: reading } = await replica((_req, res) => {
      res.writeHead(200, { "content-type": "application/json" });
      res.write('{"data":[');
    });
    const c2 = new AbortController();
    const p2 = reading(1, 1024, c2.signal).catch((e: unknown) => e);
    await until(() => trickle.seen.length === 1);
    await new Promise((r) => setTimeout(r, 50));
    c2.abort(left);
    expect(await p2).toBe(left);
  });
});

it("embeddingsBody: the passthrough fields, the served model, the inputs, base64, and dimensions only when asked", () => {
  const req = (embed?: { inputs: string[]; dimensions?: number }) =>
    ({ passthrough: { user: "u", model: "x" }, ...(embed ? { embed } : {}) }) as unknown as InferenceRequest;
  expect(JSON.parse(embeddingsBody(req({ inputs: ["a", "b"] }), "served"))).toEqual({
    user: "u",
    model: "served",
    input: ["a", "b"],
    encoding_format: "base64",
  });
  expect(JSON.parse(embeddingsBody(req({ inputs: ["a"], dimensions: 8 }), "served"))).toMatchObject({
    dimensions: 8,
  });
  expect(() => embeddingsBody(req(), "served")).toThrow("not an embedding request");
});

it("answerBytesBound: base64 of the vectors' bytes plus per-vector and per-answer framing", () => {
  expect(answerBytesBound(1, 3)).toBe(4 + 100 + 4096);
  expect(answerBytesBound(10, 3000)).toBe(4000 + 1000 + 4096);
});

function until(cond: () => boolean, ms?: number) {
  return waitFor(cond, "the condition", ms);
}
