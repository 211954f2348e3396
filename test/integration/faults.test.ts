/**
 * The gateway against failing replicas (the simulator's fault injection) and bad clients: failover before
 * the first token, never after it; cancellation and deadlines that reach the replica; immediate errors
 * when nothing can serve; the right code for every bad request, and an unharmed gateway afterwards.
 */
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterEach, describe, expect, it } from "vitest";
import {
  ErrorDetailSchema,
  ErrorReason,
  InferenceService,
} from "../../gen/es/kinfer/inference/v1/inference_pb.js";
import type { SimServer } from "../../sim/http/sim-server.js";
import { type Harness, startHarness } from "../helpers/gateway-harness.js";
import { expectIdle, roundTripMs } from "../helpers/idle.js";
import { postJson } from "../helpers/sse.js";

const MODEL = "m";
let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

function client(harness: Harness) {
  return createClient(InferenceService, createConnectTransport({ baseUrl: harness.url, httpVersion: "2" }));
}

/** Streams one Generate call; returns the text and the error it ended with, if any. */
async function generate(
  harness: Harness,
  init: {
    prompt?: string;
    maxTokens?: number;
    signal?: AbortSignal;
    timeoutMs?: number;
    onDelta?: () => void;
  } = {},
) {
  let text = "";
  let deltas = 0;
  try {
    for await (const res of client(harness).generate(
      { model: MODEL, prompt: init.prompt ?? "hello world", sampling: { maxTokens: init.maxTokens ?? 8 } },
      {
        ...(init.signal ? { signal: init.signal } : {}),
        ...(init.timeoutMs ? { timeoutMs: init.timeoutMs } : {}),
      },
    )) {
      if (res.event.case === "delta") {
        text += res.event.value.text;
        deltas++;
        init.onDelta?.();
      }
    }
    return { text, deltas, error: undefined };
  } catch (err) {
    return { text, deltas, error: ConnectError.from(err) };
  }
}

async function metricValue(r: SimServer, name: string, labels: string): Promise<number> {
  const line = (await r.metricsText())
    .split("\n")
    .find((l) => l.startsWith(`${name}{`) && l.includes(labels));
  return line === undefined ? 0 : Number(line.split(" ").at(-1));
}

const roundRobin = { routing: { algorithm: "round-robin" } };

describe("failover before the first token", () => {
  it.each([
    ["refuses connections", { refuse: 1 }],
    ["answers 503", { status: 1, statusCode: 503 }],
    ["answers 429", { status: 1, statusCode: 429 }],
  ])("a replica that %s: every request succeeds on another", async (_, faults) => {
    h = await startHarness({ models: { [MODEL]: { stable: 3 } }, config: roundRobin });
    const [bad] = h.all();
    await h.setFaults([bad as SimServer], faults);
    for (let i = 0; i < 12; i++) {
      const r = await generate(h);
      expect(r.error).toBeUndefined();
      expect(r.deltas).toBeGreaterThan(0);
    }
    const metrics = await (await fetch(`${h.url}/metrics`)).text();
    expect(metrics).toMatch(/kinfer_gateway_retries_total\{model="m",failure="[a-z-]+"\} [1-9]/);
  });

  it("1 of 3 replicas down: 1,000 requests, 1,000 served by the other two", async () => {
    h = await startHarness({ models: { [MODEL]: { stable: 3 } }, config: roundRobin });
    const [down, ...up] = h.all() as [SimServer, SimServer, SimServer];
    await down.close();
    let next = 0;
    let succeeded = 0;
    const errors: string[] = [];
    const worker = async () => {
      for (let i = next++; i < 1000; i = next++) {
        const r = await generate(h as Harness, { maxTokens: 2 });
        if (r.error === undefined && r.deltas > 0) succeeded++;
        else errors.push(r.error?.message ?? "no tokens");
      }
    };
    await Promise.all(Array.from({ length: 32 }, worker));
    expect(errors.slice(0, 5)).toEqual([]);
    expect(succeeded).toBe(1000);
    // The oracle: the live replicas' own counts of requests they finished, 1,000 between them.
    let served = 0;
    for (const r of up)
      served += await metricValue(r, "vllm:request_success_total", 'finished_reason="length"');
    expect(served).toBe(1000);
  }, 60_000);
});

describe("failures after the first token are never retried", () => {
  it.each([
    ["drops the connection", { drop: 1, afterTokens: 3 }],
    ["sends vLLM's in-band error event", { errorMidStream: 1, afterTokens: 3 }],
  ])("a replica that %s: the partial text, then UNAVAILABLE, no hang", async (_, faults) => {
    h = await startHarness({ models: { [MODEL]: { stable: 2 } } });
    await h.setFaults(h.all(), faults);
    const started = performance.now();
    const r = await generate(h, { maxTokens: 50 });
    expect(performance.now() - started).toBeLessThan(5000);
    expect(r.deltas).toBe(3);
    expect(r.error?.code).toBe(Code.Unavailable);
    expect(r.error?.findDetails(ErrorDetailSchema)[0]?.reason).toBe(ErrorReason.UPSTREAM_FAILED);
    expect(r.error?.rawMessage).toBe("the model server failed during generation"); // nothing from upstream
    // Only one replica saw the request: no retry after the first token.
    const served = await Promise.all(
      h.all().map((rep) => metricValue(rep, "vllm:prompt_tokens_total", 'model_name="m"')),
    );
    expect(served.filter((n) => n > 0)).toHaveLength(1);
  });

  it("an OpenAI stream that fails mid-way ends with an in-band error event", async () => {
    h = await startHarness({ models: { [MODEL]: { stable: 1 } } });
    await h.setFaults(h.all(), { drop: 1, afterTokens: 2 });
    const res = await postJson(`${h.url}/v1/completions`, {
      model: MODEL,
      prompt: "x",
      max_tokens: 20,
      stream: true,
    });
    expect(res.status).toBe(200);
    const body = await res.text();
    expect(body).toContain('"type":"server_error"');
    expect(body.trim().endsWith("data: [DONE]")).toBe(true);
  });
});

describe("cancellation and deadlines reach the replica", () => {
  it("a client that cancels: the replica records the abort promptly and in-flight returns to 0", async () => {
    h = await startHarness({ models: { [MODEL]: { stable: 1 } } });
    const replica = h.all()[0] as SimServer;
    // Promptly: within ten one-token round trips on this machine now (200 ms at least), where the
    // generation it stops would run for seconds.
    const bound = Math.max(200, 10 * (await roundTripMs(h.url, MODEL)));
    const control = new AbortController();
    let cancelledAt = 0;
    const pending = generate(h, {
      maxTokens: 2000,
      signal: control.signal,
      onDelta: () => {
        if (cancelledAt === 0) {
          cancelledAt = performance.now();
          control.abort();
        }
      },
    });
    const r = await pending;
    expect(r.error?.code).toBe(Code.Canceled);
    let recordedAfter = Number.POSITIVE_INFINITY;
    while (performance.now() - cancelledAt < 2000) {
      if ((await metricValue(replica, "vllm:request_success_total", 'finished_reason="abort"')) === 1) {
        recordedAfter = performance.now() - cancelledAt;
        break;
      }
      await new Promise((res) => setTimeout(res, 5));
    }
    expect(recordedAfter).toBeLessThan(bound);
    expect(replica.engine.stats()).toMatchObject({ running: 0, kvCacheUsage: 0 });
    expect(h.gateway.pipeline.inFlight).toBe(0);
    expect(h.gateway.table.replicas()[0]?.inFlight).toBe(0);
  });

  it("a deadline that passes: DEADLINE_EXCEEDED, and the replica aborts", async () => {
    h = await startHarness({ models: { [MODEL]: { stable: 1 } } });
    const replica = h.all()[0] as SimServer;
    await h.setFaults([replica], { stall: 1, stallMs: 5000 });
    const started = performance.now();
    const r = await generate(h, { timeoutMs: 200, maxTokens: 4000 }); // the engine is still generating
    expect(r.error?.code).toBe(Code.DeadlineExceeded);
    expect(performance.now() - started).toBeLessThan(1000);
    await new Promise((res) => setTimeout(res, 100));
    expect(await metricValue(replica, "vllm:request_success_total", 'finished_reason="abort"')).toBe(1);
  });

  it("a client deadline longer than limits.maxTimeoutMs is rejected", async () => {
    h = await startHarness({
      models: { [MODEL]: { stable: 1 } },
      config: { limits: { maxTimeoutMs: 1000 } },
    });
    const r = await generate(h, { timeoutMs: 5000 });
    expect(r.error?.code).toBe(Code.InvalidArgument);
  });

  it("a call with no deadline gets limits.maxTimeoutMs: it ends with DEADLINE_EXCEEDED, nothing held", async () => {
    h = await startHarness({
      models: { [MODEL]: { stable: 1 } },
      config: { limits: { maxTimeoutMs: 600 } },
    });
    const started = performance.now();
    const r = await generate(h, { maxTokens: 4000 }); // longer than 600 ms at the engine's pace
    const took = performance.now() - started;
    expect(r.error?.code).toBe(Code.DeadlineExceeded);
    expect(took).toBeGreaterThanOrEqual(550);
    expect(took).toBeLessThan(3000);
    await expectIdle(h);
  });
});

describe("nothing can serve", () => {
  it("all replicas down: UNAVAILABLE at once", async () => {
    h = await startHarness({ models: { [MODEL]: { stable: 3 } } });
    // "At once": within five one-token round trips (500 ms at least), not after a connect or first-token
    // timeout.
    const bound = Math.max(500, 5 * (await roundTripMs(h.url, MODEL)));
    await Promise.all(h.all().map((r) => r.close()));
    for (const wait of [0, 200]) {
      await new Promise((res) => setTimeout(res, wait)); // before and after the scraper notices
      const started = performance.now();
      const r = await generate(h);
      expect(r.error?.code).toBe(Code.Unavailable);
      expect(r.error?.findDetails(ErrorDetailSchema)[0]?.reason).toBe(ErrorReason.NO_HEALTHY_REPLICA);
      expect(performance.now() - started).toBeLessThan(bound);
    }
    // Still ready: it answers, and its UNAVAILABLE answers are what scale from zero triggers on.
    expect((await fetch(`${h.url}/readyz`)).status).toBe(200);
  });
});

describe("bad requests get the right code and harm nothing", () => {
  it("over Connect", async () => {
    h = await startHarness({ models: { [MODEL]: { stable: 1 } } });
    const c = client(h);
    const code = async (req: Parameters<typeof c.generate>[0]) => {
      try {
        for await (const _ of c.generate(req)) {
          /* drain */
        }
        return undefined;
      } catch (err) {
        return ConnectError.from(err).code;
      }
    };
    expect(await code({ model: "unknown", prompt: "x" })).toBe(Code.NotFound);
    expect(await code({ model: MODEL, prompt: "" })).toBe(Code.InvalidArgument);
    expect(await code({ model: MODEL, prompt: "x", sampling: { maxTokens: 1_000_000 } })).toBe(
      Code.InvalidArgument,
    );
    expect(await code({ model: MODEL, prompt: "x", sampling: { temperature: 7 } })).toBe(
      Code.InvalidArgument,
    );
    expect(await code({ model: MODEL, prompt: "x", routing: { version: "nope" } })).toBe(Code.NotFound);
    // A 10 MB message, over HTTP/1.1 (connect-node's own HTTP/2 client refuses to buffer that much).
    const h1 = createClient(InferenceService, createConnectTransport({ baseUrl: h.url, httpVersion: "1.1" }));
    await expect(
      (async () => {
        for await (const _ of h1.generate({ model: MODEL, prompt: "x".repeat(10 * 1024 * 1024) })) {
          /* drain */
        }
      })(),
    ).rejects.toMatchObject({ code: Code.ResourceExhausted });
    // Malformed Connect JSON.
    const res = await fetch(`${h.url}/kinfer.inference.v1.InferenceService/ListModels`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: "{nope",
    });
    expect(res.status).toBe(400);
    expect((await generate(h)).error).toBeUndefined();
  });

  it("over the OpenAI surface", async () => {
    h = await startHarness({ models: { [MODEL]: { stable: 1 } } });
    const call = async (body: unknown) => {
      const res = await postJson(`${h?.url}/v1/chat/completions`, body);
      const json = (await res.json()) as { error?: { message: string; type: string } };
      return { status: res.status, error: json.error };
    };
    const chat = { model: MODEL, messages: [{ role: "user", content: "hi" }], max_tokens: 4 };
    expect(await call({ ...chat, model: "unknown" })).toMatchObject({
      status: 404,
      error: { type: "invalid_request_error" },
    });
    expect((await call({ ...chat, messages: [] })).status).toBe(400);
    expect((await call({ ...chat, messages: [{ role: "user", content: "" }] })).status).toBe(400);
    expect((await call({ ...chat, max_tokens: 1_000_000 })).status).toBe(400);
    expect((await call({ ...chat, max_tokens: "four" })).error?.message).toMatch(/max_tokens/);
    expect((await call("{not json")).status).toBe(400);
    expect((await call([1, 2])).status).toBe(400);
    const big = await postJson(`${h.url}/v1/chat/completions`, {
      ...chat,
      messages: [{ role: "user", content: "x".repeat(10 * 1024 * 1024) }],
    });
    expect(big.status).toBe(413);
    expect((await call(chat)).status).toBe(200);
    expect(h.gateway.pipeline.inFlight).toBe(0);
  });
});
