/**
 * What the gateway sends to vLLM: OpenAI fields it does not interpret pass through unchanged; the fields
 * it owns (model, stream, stream_options, max_tokens) are always its own, the sampling fields mapped one
 * by one. How it reads the answer, from scripted replicas: vLLM's stream as events, error statuses as
 * typed failures (retry-after, bounded detail), a stream that breaks in each way vLLM's can. And a request
 * aborted before its replica answered is given up at once, wherever undici holds it.
 */
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { Agent } from "undici";
import { expect, it } from "vitest";
import {
  classifyStatus,
  describeError,
  openUpstream,
  UpstreamError,
  type UpstreamEvent,
  type UpstreamStream,
  upstreamBody,
} from "../../../server/relay/upstream-stream.js";
import type { InferenceRequest } from "../../../server/request/inference-request.js";
import { waitFor } from "../../helpers/idle.js";

const base: InferenceRequest = {
  requestId: "r",
  protocol: "openai",
  model: "llama",
  messages: [{ role: "user", content: "hi", name: "ada" }],
  sampling: { stop: ["\n"], temperature: 0.2, seed: 7 },
  affinityKey: "",
  priority: "standard",
  version: "",
  passthrough: { logprobs: true, response_format: { type: "json_object" }, stream: false, model: "evil" },
  signal: new AbortController().signal,
  credential: "",
};

it("passes unknown fields through and keeps control of the ones the relay needs", () => {
  const body = JSON.parse(upstreamBody(base, "llama-served", 512));
  expect(body).toEqual({
    logprobs: true,
    response_format: { type: "json_object" },
    model: "llama-served",
    stream: true,
    stream_options: { include_usage: true, continuous_usage_stats: true },
    max_tokens: 512,
    messages: [{ role: "user", content: "hi", name: "ada" }],
    temperature: 0.2,
    stop: ["\n"],
    seed: 7,
  });
});

it("maps priority to vLLM's (lower runs first) and sends a completion prompt", () => {
  const { messages: _, ...rest } = base;
  const completion: InferenceRequest = { ...rest, prompt: "Once", priority: "critical", passthrough: {} };
  const body = JSON.parse(upstreamBody(completion, "m", 16));
  expect(body).toMatchObject({ prompt: "Once", priority: -1, max_tokens: 16 });
  expect(body.messages).toBeUndefined();
});

it("an abort while the request waits in undici's queue rejects at once, not when the pool gets to it", async () => {
  // A pool of one connection, taken by a request the server never answers: the next one waits in undici's
  // queue, where it has no controller yet (as it has none while its connection is being made).
  const server = http.createServer(() => {});
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const agent = new Agent({ connections: 1, pipelining: 1 });
  const holder = new AbortController();
  const first = openUpstream(url, "/v1/completions", "{}", "a", holder.signal, agent).catch((e) => e);
  const client = new AbortController();
  const second = openUpstream(url, "/v1/completions", "{}", "b", client.signal, agent);
  await new Promise((r) => setTimeout(r, 100));
  const left = new Error("the client left");
  client.abort(left);
  const outcome = await Promise.race([
    second.then(
      () => "opened",
      (err: unknown) => err,
    ),
    new Promise((r) => setTimeout(() => r("still waiting after 2 s"), 2000)),
  ]);
  expect(outcome).toBe(left);
  holder.abort(new Error("done"));
  await first;
  await agent.destroy();
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
});

it("sends every sampling field vLLM takes, and only those set; criticality as vLLM's priority", () => {
  const { messages: _, ...rest } = base;
  const full: InferenceRequest = {
    ...rest,
    prompt: "p",
    passthrough: {},
    priority: "sheddable",
    sampling: {
      stop: ["x"],
      maxTokens: 9,
      temperature: 0.5,
      topP: 0.9,
      topK: 40,
      seed: 3,
      presencePenalty: 0.1,
      frequencyPenalty: -0.2,
    },
  };
  expect(JSON.parse(upstreamBody(full, "m", 16))).toMatchObject({
    prompt: "p",
    max_tokens: 9,
    temperature: 0.5,
    top_p: 0.9,
    top_k: 40,
    stop: ["x"],
    seed: 3,
    presence_penalty: 0.1,
    frequency_penalty: -0.2,
    priority: 1,
  });
  const bare = JSON.parse(upstreamBody({ ...full, priority: "standard", sampling: { stop: [] } }, "m", 16));
  expect(Object.keys(bare).sort()).toEqual(["max_tokens", "model", "prompt", "stream", "stream_options"]);
});

it("classifies a replica's error status as the relay treats it", () => {
  expect(classifyStatus(429, "")).toBe("overloaded");
  expect(classifyStatus(400, "This model's maximum context length is 8192 tokens")).toBe("context-length");
  expect(classifyStatus(400, "is longer than the maximum model length of 4096")).toBe("context-length");
  expect(classifyStatus(400, "bad temperature")).toBe("rejected");
  expect(classifyStatus(413, "maximum context length")).toBe("rejected");
  expect(classifyStatus(401, "")).toBe("rejected");
  expect(classifyStatus(404, "The model `x` does not exist.")).toBe("not-found");
  expect(classifyStatus(500, "")).toBe("unavailable");
  expect(classifyStatus(503, "")).toBe("unavailable");
  expect(classifyStatus(499, "")).toBe("rejected");
});

/** A replica that answers every request with `answer`, and records what it was sent. */
async function scriptedReplica(answer: (res: http.ServerResponse) => void) {
  const seen: { headers: http.IncomingHttpHeaders; body: string }[] = [];
  const server = http.createServer((req, res) => {
    let body = "";
    req.on("data", (c: Buffer) => {
      body += c.toString();
    });
    req.on("end", () => {
      seen.push({ headers: req.headers, body });
      answer(res);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const agent = new Agent();
  return {
    seen,
    open: (signal = new AbortController().signal, trace?: Record<string, string>) =>
      openUpstream(url, "/v1/chat/completions", '{"x":1}', "req-1", signal, agent, trace),
    async close() {
      await agent.destroy();
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    },
  };
}

/** Every event of a stream, then its failure (or "ended" after done). */
async function drain(stream: UpstreamStream): Promise<{ events: UpstreamEvent[]; failure: unknown }> {
  const events: UpstreamEvent[] = [];
  try {
    for (;;) {
      const e = await stream.next();
      events.push(e);
      if (e.type === "done") return { events, failure: "ended" };
    }
  } catch (err) {
    return { events, failure: err };
  }
}

const sse = (...chunks: unknown[]) =>
  chunks.map((c) => `data: ${typeof c === "string" ? c : JSON.stringify(c)}\n\n`).join("");

it("reads vLLM's stream: usage before the chunk's text, extras without nulls, finish, [DONE]; sends its headers", async () => {
  const replica = await scriptedReplica((res) => {
    res.writeHead(200, { "content-type": "text/event-stream" });
    res.end(
      sse(
        { choices: [{ delta: { role: "assistant", content: "" } }] },
        {
          choices: [{ delta: { content: "Hel", tool_calls: null, reasoning_content: "think" } }],
          usage: { prompt_tokens: 5, completion_tokens: 1, prompt_tokens_details: { cached_tokens: 2 } },
        },
        { choices: [{ text: "lo", logprobs: { content: [] } }] },
        { choices: [{ delta: {}, finish_reason: "stop", stop_reason: "\n" }], usage: null },
        "[DONE]",
      ),
    );
  });
  try {
    const { events, failure } = await drain(await replica.open(undefined, { traceparent: "00-a-b-01" }));
    expect(failure).toBe("ended");
    expect(events).toEqual([
      { type: "usage", promptTokens: 5, completionTokens: 1, cachedTokens: 2 },
      { type: "text", text: "Hel", extras: { delta: { reasoning_content: "think" } } },
      { type: "text", text: "lo", extras: { logprobs: { content: [] } } },
      { type: "finish", reason: "stop", stopReason: "\n" },
      { type: "done" },
    ]);
    const headers = replica.seen[0]?.headers;
    expect(headers?.["content-type"]).toBe("application/json");
    expect(headers?.accept).toBe("text/event-stream");
    expect(headers?.["x-request-id"]).toBe("req-1");
    expect(headers?.traceparent).toBe("00-a-b-01");
    expect(replica.seen[0]?.body).toBe('{"x":1}');
  } finally {
    await replica.close();
  }
});

it("a non-200 answer is an UpstreamError of its class, with retry-after in ms and a bounded detail", async () => {
  let status = 503;
  let retryAfter = "2";
  let body = "busy";
  const replica = await scriptedReplica((res) => {
    res.writeHead(status, { "retry-after": retryAfter });
    res.end(body);
  });
  try {
    const failed = (await replica.open().catch((e: unknown) => e)) as UpstreamError;
    expect(failed).toBeInstanceOf(UpstreamError);
    expect(failed.name).toBe("UpstreamError");
    expect(failed.failure).toBe("unavailable");
    expect(failed.retryAfterMs).toBe(2000);
    expect(failed.detail).toBe("HTTP 503: busy");
    expect(failed.message).toBe("unavailable: HTTP 503: busy");
    for (const bad of ["0", "-1", "soon", ""]) {
      retryAfter = bad;
      expect(((await replica.open().catch((e: unknown) => e)) as UpstreamError).retryAfterMs).toBeUndefined();
    }
    status = 400;
    body = `This model's maximum context length is 10 tokens. ${"x".repeat(200_000)}`;
    const long = (await replica.open().catch((e: unknown) => e)) as UpstreamError;
    expect(long.failure).toBe("context-length");
    expect(long.detail.length).toBe("HTTP 400: ".length + 300);
  } finally {
    await replica.close();
  }
});

it("a stream that breaks is a typed failure after the events before it", async () => {
  let script = "";
  const replica = await scriptedReplica((res) => {
    res.writeHead(200, { "content-type": "text/event-stream" });
    res.end(script);
  });
  const text = { choices: [{ delta: { content: "a" } }] };
  const cases: [string, string, RegExp][] = [
    [sse(text), "broken-stream", /without \[DONE\]/],
    [sse(text, { error: { message: "engine died" } }), "broken-stream", /in-band error: engine died/],
    [sse(text, "{not json"), "protocol", /bad event/],
    [sse(text, 5), "protocol", /not an object/],
    [sse(text, "null"), "protocol", /not an object/],
    [sse(text, { error: null }), "broken-stream", /in-band error: undefined/],
  ];
  try {
    for (const [body, failure, detail] of cases) {
      script = body;
      const { events, failure: err } = await drain(await replica.open());
      expect(events[0], failure).toEqual({ type: "text", text: "a" });
      expect((err as UpstreamError).failure, String(detail)).toBe(failure);
      expect((err as UpstreamError).detail).toMatch(detail);
    }
  } finally {
    await replica.close();
  }
});

it("a request aborted before it is sent is refused at once with the abort's reason", async () => {
  const replica = await scriptedReplica((res) => res.end());
  try {
    const control = new AbortController();
    const reason = new Error("gone");
    control.abort(reason);
    expect(await replica.open(control.signal).catch((e: unknown) => e)).toBe(reason);
    expect(replica.seen).toHaveLength(0);
  } finally {
    await replica.close();
  }
});

it("an event that never ends is cut at 1 MiB while the response stays open", async () => {
  const replica = await scriptedReplica((res) => {
    res.writeHead(200, { "content-type": "text/event-stream" });
    res.write(sse({ choices: [{ delta: { content: "a" } }] }));
    res.write(`data: ${"x".repeat(1024 * 1024 + 10)}`); // no end: the replica keeps the response open
  });
  try {
    const { events, failure } = await drain(await replica.open());
    expect(events).toEqual([{ type: "text", text: "a" }]);
    expect((failure as UpstreamError).failure).toBe("protocol");
    expect((failure as UpstreamError).detail).toBe("event too large");
  } finally {
    await replica.close();
  }
});

it("sends no priority when the request names none (vLLM's default)", () => {
  const { priority: _, ...unset } = base;
  expect(JSON.parse(upstreamBody(unset, "m", 16)).priority).toBeUndefined();
});

it("an event split across network reads is read whole", async () => {
  const replica = await scriptedReplica((res) => {
    res.writeHead(200, { "content-type": "text/event-stream" });
    res.write('data: {"choices":[{"delta":{"content":"hel');
    setTimeout(() => res.end(`lo"}}]}\n\n${sse("[DONE]")}`), 30);
  });
  try {
    const { events, failure } = await drain(await replica.open());
    expect(failure).toBe("ended");
    expect(events).toEqual([{ type: "text", text: "hello" }, { type: "done" }]);
  } finally {
    await replica.close();
  }
});

it("a character split across network reads is decoded whole (UTF-8 read as a stream)", async () => {
  const text = Buffer.from('data: {"choices":[{"delta":{"content":"naïve 🙂"}}]}\n\n');
  const cut = text.indexOf(Buffer.from("🙂")) + 2; // inside the emoji's four bytes
  const replica = await scriptedReplica((res) => {
    res.writeHead(200, { "content-type": "text/event-stream" });
    res.write(text.subarray(0, cut));
    setTimeout(() => res.end(Buffer.concat([text.subarray(cut), Buffer.from(sse("[DONE]"))])), 30);
  });
  try {
    const { events } = await drain(await replica.open());
    expect(events).toEqual([{ type: "text", text: "naïve 🙂" }, { type: "done" }]);
  } finally {
    await replica.close();
  }
});

it("a reader waiting on the stream is handed each event as it arrives, not when the response ends", async () => {
  let end: () => void = () => {};
  const replica = await scriptedReplica((res) => {
    res.writeHead(200, { "content-type": "text/event-stream" });
    res.write(sse({ choices: [{ delta: { content: "a" } }] }));
    setTimeout(() => res.write(sse({ choices: [{ delta: { content: "b" } }] })), 50);
    end = () => res.end(sse("[DONE]"));
  });
  try {
    const stream = await replica.open();
    const within = (p: Promise<UpstreamEvent>) =>
      Promise.race([p, new Promise((r) => setTimeout(() => r("nothing within 2 s"), 2000))]);
    expect(await within(stream.next())).toEqual({ type: "text", text: "a" });
    expect(await within(stream.next())).toEqual({ type: "text", text: "b" });
    end();
    expect(await stream.next()).toEqual({ type: "done" });
  } finally {
    await replica.close();
  }
});

it("events already read are not handed on once the request is aborted", async () => {
  const replica = await scriptedReplica((res) => {
    res.writeHead(200, { "content-type": "text/event-stream" });
    res.write(sse(...["a", "b", "c"].map((content) => ({ choices: [{ delta: { content } }] }))));
  });
  try {
    const control = new AbortController();
    const stream = await replica.open(control.signal);
    expect(await stream.next()).toEqual({ type: "text", text: "a" });
    const left = new Error("the client left");
    control.abort(left);
    expect(() => stream.take()).toThrow(left);
    await expect(stream.next()).rejects.toBe(left);
  } finally {
    await replica.close();
  }
});

it("a reader that takes nothing holds the replica back (its socket paused), and gets every event in order once it reads", async () => {
  // 30,000 events of about 550 bytes: 16 MB, more than the sockets' buffers hold.
  const events = 30_000;
  const pad = "x".repeat(500);
  let written = 0;
  let total = 0;
  const replica = await scriptedReplica((res) => {
    res.writeHead(200, { "content-type": "text/event-stream" });
    let i = 0;
    const pump = () => {
      while (i < events) {
        const line = sse({ choices: [{ delta: { content: `${i}:${pad}` } }] });
        i++;
        written += line.length;
        if (!res.write(line)) {
          res.once("drain", pump);
          return;
        }
      }
      res.end(sse("[DONE]"));
    };
    pump();
  });
  try {
    total = events * sse({ choices: [{ delta: { content: `29999:${pad}` } }] }).length;
    const stream = await replica.open();
    await new Promise((r) => setTimeout(r, 300));
    // Socket buffers hold some megabytes; the rest waits for the reader.
    expect(written).toBeLessThan(total / 2);
    let n = 0;
    let outOfOrder = 0;
    for (;;) {
      const e = stream.take() ?? (await stream.next());
      if (e.type === "done") break;
      if (e.type !== "text" || e.text !== `${n}:${pad}`) outOfOrder++;
      n++;
    }
    expect([n, outOfOrder]).toEqual([events, 0]);
  } finally {
    await replica.close();
  }
});

it("after [DONE] an abort lets the response end by itself (the connection is kept); one that never ends is cut a second later", async () => {
  const outcomes: string[] = [];
  let never = false;
  const replica = await scriptedReplica((res) => {
    res.on("close", () => outcomes.push(res.writableFinished ? "ended" : "cut"));
    res.writeHead(200, { "content-type": "text/event-stream" });
    res.write(sse({ choices: [{ delta: { content: "a" } }] }, "[DONE]"));
    if (!never) setTimeout(() => res.end(), 200);
  });
  try {
    const readToDone = async (control: AbortController) => {
      const stream = await replica.open(control.signal);
      const { failure } = await drain(stream);
      expect(failure).toBe("ended");
      control.abort(new Error("the relay is done"));
    };
    await readToDone(new AbortController());
    await until(() => outcomes.length === 1, 3000);
    expect(outcomes).toEqual(["ended"]);
    never = true;
    const began = performance.now();
    await readToDone(new AbortController());
    await until(() => outcomes.length === 2, 3000);
    expect(outcomes).toEqual(["ended", "cut"]);
    expect(performance.now() - began).toBeGreaterThanOrEqual(900);
  } finally {
    await replica.close();
  }
});

function until(cond: () => boolean, ms?: number) {
  return waitFor(cond, "the condition", ms);
}

it("reads vLLM's chunks defensively: usage numbers clamped, empty and null deltas skipped, extras kept with empty text", async () => {
  let script = "";
  const replica = await scriptedReplica((res) => {
    res.writeHead(200, { "content-type": "text/event-stream" });
    res.end(script);
  });
  const usage = (prompt: unknown, completion: unknown, cached: unknown) => ({
    choices: [],
    usage: {
      prompt_tokens: prompt,
      completion_tokens: completion,
      prompt_tokens_details: { cached_tokens: cached },
    },
  });
  const cases: [unknown, UpstreamEvent[]][] = [
    [usage(-1, "5", 2.7), [{ type: "usage", promptTokens: 0, completionTokens: 0, cachedTokens: 2 }]],
    [usage(3, true, null), [{ type: "usage", promptTokens: 3, completionTokens: 0, cachedTokens: 0 }]],
    [
      { choices: [], usage: { prompt_tokens: 1, completion_tokens: 0, prompt_tokens_details: null } },
      [{ type: "usage", promptTokens: 1, completionTokens: 0, cachedTokens: 0 }],
    ],
    [{ choices: [{ delta: null }] }, []],
    [{ choices: [{ delta: { content: "" } }] }, []],
    [{ choices: [{ delta: { content: "", tool_calls: null, reasoning_content: null } }] }, []],
    [{ choices: [{ delta: { content: "x", reasoning_content: null } }] }, [{ type: "text", text: "x" }]],
    [{ choices: [{ delta: "not an object" }] }, []],
    [{ choices: [{ text: "", logprobs: null }] }, []],
    [
      { choices: [{ text: "", logprobs: { tokens: [] } }] },
      [{ type: "text", text: "", extras: { logprobs: { tokens: [] } } }],
    ],
    [
      { choices: [{ delta: { tool_calls: [{ index: 0 }] } }] },
      [{ type: "text", text: "", extras: { delta: { tool_calls: [{ index: 0 }] } } }],
    ],
    [{ choices: [{ text: "t", delta: { content: "d" } }] }, [{ type: "text", text: "t" }]],
    [{ choices: "none" }, []],
  ];
  try {
    for (const [chunk, want] of cases) {
      script = sse(chunk, "[DONE]");
      const { events } = await drain(await replica.open());
      expect(events, JSON.stringify(chunk)).toEqual([...want, { type: "done" }]);
    }
  } finally {
    await replica.close();
  }
});

it("describeError: a network error's code and message, for logs", () => {
  expect(describeError(Object.assign(new Error("connect refused"), { code: "ECONNREFUSED" }))).toBe(
    "ECONNREFUSED connect refused",
  );
  expect(describeError(new Error("boom"))).toBe("error boom");
  expect(describeError("text")).toBe("error text");
  expect(describeError(undefined)).toBe("error undefined");
});
