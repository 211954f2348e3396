/**
 * The README's promises about the gateway that no other test held it to, through a live gateway with real
 * clients, each checked against an oracle outside the gateway where one exists (the replicas' own request
 * counts): the retry budget bounds retries; ejections back off (each one twice as long); limits.maxInFlight
 * answers OVERLOADED; sessions stick to a replica by x-session-id and by OpenAI's `user`; the OpenAI API
 * over HTTP/2 (h2c), streaming and not.
 */
import { connect as http2Connect } from "node:http2";
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
import { expectIdle, metricSum, waitFor } from "../helpers/idle.js";
import { postJson } from "../helpers/sse.js";

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

async function generate(harness: Harness, init: { maxTokens?: number; session?: string } = {}) {
  const client = createClient(
    InferenceService,
    createConnectTransport({ baseUrl: harness.url, httpVersion: "2" }),
  );
  try {
    let tokens = 0;
    for await (const res of client.generate(
      { model: "m", prompt: "hello", sampling: { maxTokens: init.maxTokens ?? 2 } },
      init.session !== undefined ? { headers: { "x-session-id": init.session } } : {},
    )) {
      if (res.event.case === "delta") tokens += res.event.value.tokenCount;
    }
    return { tokens };
  } catch (err) {
    return { error: ConnectError.from(err) };
  }
}

/** Requests a replica finished, by its own metrics. */
async function finished(r: SimServer): Promise<number> {
  return metricSum(await r.metricsText(), "vllm:request_success_total");
}

describe("the retry budget", () => {
  it("bounds retries: with no budget, requests sent to a failing replica fail; with the default, none do", async () => {
    const run = async (retry: Record<string, number>) => {
      h = await startHarness({
        models: { m: { stable: 2 } },
        config: { routing: { algorithm: "round-robin" }, retry, ejection: { consecutiveFailures: 1000 } },
      });
      const [bad] = h.all() as [SimServer, SimServer];
      await h.setFaults([bad], { status: 1, statusCode: 503 });
      const results = [];
      for (let i = 0; i < 20; i++) results.push(await generate(h));
      const retries = metricSum(
        await (await fetch(`${h.url}/metrics`)).text(),
        "kinfer_gateway_retries_total",
      );
      const failed = results.filter((r) => r.error !== undefined);
      await h.close();
      h = undefined;
      return { failed, retries };
    };
    const none = await run({ budgetRatio: 0, minRetries: 0 });
    // Round-robin sends every other request to the failing replica first: those fail, unretried.
    expect(none.retries).toBe(0);
    expect(none.failed.length).toBe(10);
    for (const r of none.failed) expect(r.error?.code).toBe(Code.Unavailable);
    const budget = await run({});
    expect(budget.failed).toEqual([]);
    expect(budget.retries).toBe(10);
  });
});

describe("outlier ejection", () => {
  it("backs off: each ejection of the same replica lasts twice as long as the one before", async () => {
    h = await startHarness({
      models: { m: { stable: 3 } },
      config: {
        routing: { algorithm: "round-robin" },
        ejection: { consecutiveFailures: 2, baseMs: 400, maxMs: 10_000 },
      },
    });
    const [bad] = h.all() as [SimServer, SimServer, SimServer];
    await h.setFaults([bad], { status: 1, statusCode: 503 });
    const replica = h.gateway.table.replicas().find((r) => r.url === bad.url);
    if (replica === undefined) throw new Error("no replica");
    const durations: number[] = [];
    let seen = 0;
    let sending = true;
    // Traffic keeps coming, so that the replica fails again as soon as each ejection ends.
    const traffic = (async () => {
      while (sending) await generate(h as Harness);
    })();
    const watch = (async () => {
      while (durations.length < 3) {
        if (replica.ejectedUntil !== seen && replica.ejectedUntil > performance.now()) {
          seen = replica.ejectedUntil;
          durations.push(seen - performance.now());
        }
        await new Promise((r) => setTimeout(r, 2));
      }
    })();
    await Promise.race([
      watch,
      new Promise((_, reject) => setTimeout(() => reject(new Error("no 3 ejections")), 20_000)),
    ]);
    sending = false;
    await traffic;
    // Each measured from the moment it was seen (within a few ms of being set): 400, 800, 1,600 ms.
    expect(durations[0]).toBeGreaterThan(300);
    expect(durations[0]).toBeLessThanOrEqual(400);
    expect(durations[1]).toBeGreaterThan(700);
    expect(durations[1]).toBeLessThanOrEqual(800);
    expect(durations[2]).toBeGreaterThan(1500);
    expect(durations[2]).toBeLessThanOrEqual(1600);
    expect(metricSum(await (await fetch(`${h.url}/metrics`)).text(), "kinfer_gateway_ejections_total")).toBe(
      3,
    );
  });
});

describe("limits.maxInFlight", () => {
  it("answers RESOURCE_EXHAUSTED with reason OVERLOADED past it, and serves again once under it", async () => {
    h = await startHarness({
      models: { m: { stable: 2 } },
      engine: { decodeBaseMs: 20, decodeMsPerSeq: 0 },
      config: { limits: { maxInFlight: 2 } },
    });
    const long = [generate(h, { maxTokens: 40 }), generate(h, { maxTokens: 40 })];
    await waitFor(() => (h as Harness).gateway.activity().inFlight === 2, "two in flight");
    const third = await generate(h);
    expect(third.error?.code).toBe(Code.ResourceExhausted);
    expect(third.error?.findDetails(ErrorDetailSchema)[0]?.reason).toBe(ErrorReason.OVERLOADED);
    for (const r of await Promise.all(long)) expect(r.tokens).toBe(40);
    expect((await generate(h)).tokens).toBe(2);
    await expectIdle(h);
  });
});

describe("session affinity", () => {
  it("keeps a session on one replica by x-session-id and by OpenAI's user, and spreads different sessions", async () => {
    h = await startHarness({ models: { m: { stable: 3 } } });
    const replicas = h.all();
    const counts = async () => Promise.all(replicas.map(finished));
    const delta = async (before: number[]) => (await counts()).map((c, i) => c - (before[i] as number));

    let before = await counts();
    for (let i = 0; i < 12; i++) expect((await generate(h, { session: "alice" })).tokens).toBe(2);
    expect((await delta(before)).sort((a, b) => b - a)).toEqual([12, 0, 0]);

    before = await counts();
    for (let i = 0; i < 12; i++) {
      const res = await postJson(`${h.url}/v1/chat/completions`, {
        model: "m",
        user: "bob",
        max_tokens: 2,
        messages: [{ role: "user", content: `question ${i}` }],
      });
      expect(res.status).toBe(200);
      await res.text();
    }
    expect((await delta(before)).sort((a, b) => b - a)).toEqual([12, 0, 0]);

    before = await counts();
    for (let i = 0; i < 30; i++) await generate(h, { session: `user-${i}` });
    expect((await delta(before)).filter((n) => n > 0).length).toBe(3);
  });
});

describe("the OpenAI API over HTTP/2", () => {
  it("streams and answers over h2c, as it does over HTTP/1.1", async () => {
    h = await startHarness({ models: { m: { stable: 1 } } });
    const session = http2Connect(h.url);
    const call = (body: unknown) =>
      new Promise<{ status: number; type: string; text: string }>((resolve, reject) => {
        const stream = session.request({
          ":method": "POST",
          ":path": "/v1/chat/completions",
          "content-type": "application/json",
        });
        let status = 0;
        let type = "";
        let text = "";
        stream.on("response", (headers) => {
          status = Number(headers[":status"]);
          type = String(headers["content-type"]);
        });
        stream.setEncoding("utf8");
        stream.on("data", (d: string) => {
          text += d;
        });
        stream.on("end", () => resolve({ status, type, text }));
        stream.on("error", reject);
        stream.end(JSON.stringify(body));
      });
    try {
      const messages = [{ role: "user", content: "Hello" }];
      const streamed = await call({ model: "m", stream: true, max_tokens: 5, messages });
      expect(streamed.status).toBe(200);
      expect(streamed.type).toMatch(/^text\/event-stream/);
      const events = streamed.text.split("\n\n").filter((e) => e.startsWith("data: "));
      expect(events.at(-1)).toBe("data: [DONE]");
      const chunks = events.slice(0, -1).map((e) => JSON.parse(e.slice(6)));
      expect(chunks.at(-1).choices[0].finish_reason).toBe("length");
      const whole = await call({ model: "m", max_tokens: 5, messages });
      expect(whole.status).toBe(200);
      expect(JSON.parse(whole.text).usage.completion_tokens).toBe(5);
    } finally {
      session.close();
    }
    await expectIdle(h);
  });
});
