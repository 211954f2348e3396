/**
 * What vLLM sends reaches OpenAI clients as vLLM sent it: tool calls (streamed deltas merged into
 * message.tool_calls when not streaming, finish_reason "tool_calls") and logprobs, for chat and text
 * completions, streamed and not. Each answer through the gateway is compared with the same request sent
 * to the replica directly (same seed, same output). And request fields the gateway does not know are
 * refused by name rather than passed on by accident.
 */
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Harness, startHarness } from "../helpers/gateway-harness.js";
import { expectIdle } from "../helpers/idle.js";
import { postJson, readSseData } from "../helpers/sse.js";

let h: Harness;
beforeAll(async () => {
  h = await startHarness({ models: { m: { stable: 1 } } });
});
afterAll(() => h.close());

const WEATHER = {
  type: "function",
  function: {
    name: "get_weather",
    description: "The weather in a city",
    parameters: {
      type: "object",
      properties: {
        city: { type: "string" },
        days: { type: "integer" },
        unit: { type: "string", enum: ["celsius", "fahrenheit"] },
      },
      required: ["city"],
    },
  },
} as const;

/** The choices of an answer, without what differs per request (ids, timestamps). */
function choicesOf(body: { choices?: unknown[] }): unknown[] {
  return JSON.parse(
    JSON.stringify(body.choices ?? []).replace(/"id":"chatcmpl-tool-[0-9a-f]+"/g, '"id":"tool"'),
  );
}

async function both(path: string, body: Record<string, unknown>) {
  const direct = await postJson(`${h.all()[0]?.url}${path}`, { ...body, model: "m" });
  const via = await postJson(`${h.url}${path}`, { ...body, model: "m" });
  expect(via.status).toBe(200);
  expect(direct.status).toBe(200);
  return { direct, via };
}

describe("tool calls", () => {
  const request = {
    seed: 7,
    tools: [WEATHER],
    tool_choice: "required",
    max_tokens: 64,
    messages: [{ role: "user", content: "What is the weather in Paris?" }],
  };

  it("not streamed: message.tool_calls and finish_reason as the replica's", async () => {
    const { direct, via } = await both("/v1/chat/completions", request);
    const [d, v] = [
      (await direct.json()) as { choices: unknown[] },
      (await via.json()) as { choices: unknown[] },
    ];
    expect(choicesOf(v)).toEqual(
      choicesOf(d).map((c) => ({
        ...(c as object),
        message: {
          ...(c as { message: object }).message,
          tool_calls: (c as { message: { tool_calls: object[] } }).message.tool_calls.map((t) => ({ ...t })),
        },
      })),
    );
    const choice = v.choices[0] as {
      finish_reason: string;
      message: { content: null; tool_calls: { function: { name: string; arguments: string } }[] };
    };
    expect(choice.finish_reason).toBe("tool_calls");
    expect(choice.message.content).toBeNull();
    expect(choice.message.tool_calls[0]?.function.name).toBe("get_weather");
    expect(JSON.parse(choice.message.tool_calls[0]?.function.arguments ?? "")).toHaveProperty("city");
  });

  it("streamed: the same deltas, in order, through the gateway", async () => {
    const { direct, via } = await both("/v1/chat/completions", { ...request, stream: true });
    const events = async (r: Response) =>
      (await readSseData(r)).filter((d) => d !== "[DONE]").map((d) => choicesOf(JSON.parse(d)));
    expect(await events(via)).toEqual(await events(direct));
  });

  it("with the openai package: the call is assembled from the stream", async () => {
    const openai = new OpenAI({ baseURL: `${h.url}/v1`, apiKey: "unused" });
    const stream = openai.chat.completions.stream({
      model: "m",
      seed: 7,
      tools: [WEATHER],
      tool_choice: "auto",
      messages: [{ role: "user", content: "Call get_weather for Tokyo" }],
    });
    const final = await stream.finalChatCompletion();
    expect(final.choices[0]?.finish_reason).toBe("tool_calls");
    expect(final.choices[0]?.message.tool_calls?.[0]).toMatchObject({
      type: "function",
      function: { name: "get_weather" },
    });
    await expectIdle(h);
  });
});

describe("logprobs", () => {
  it("chat, streamed and not, as the replica sends them", async () => {
    const body = {
      seed: 3,
      logprobs: true,
      top_logprobs: 2,
      max_tokens: 6,
      messages: [{ role: "user", content: "Hi" }],
    };
    const plain = await both("/v1/chat/completions", body);
    expect(choicesOf((await plain.via.json()) as { choices: unknown[] })).toEqual(
      choicesOf((await plain.direct.json()) as { choices: unknown[] }),
    );
    const streamed = await both("/v1/chat/completions", { ...body, stream: true });
    const events = async (r: Response) =>
      (await readSseData(r)).filter((d) => d !== "[DONE]").map((d) => choicesOf(JSON.parse(d)));
    const viaEvents = await events(streamed.via);
    expect(viaEvents).toEqual(await events(streamed.direct));
    expect(JSON.stringify(viaEvents)).toContain('"top_logprobs"');
  });

  it("text completions, streamed and not", async () => {
    const body = { seed: 3, logprobs: 2, max_tokens: 6, prompt: "Once upon a time" };
    const plain = await both("/v1/completions", body);
    const viaBody = (await plain.via.json()) as { choices: unknown[] };
    expect(choicesOf(viaBody)).toEqual(choicesOf((await plain.direct.json()) as { choices: unknown[] }));
    expect((viaBody.choices[0] as { logprobs: { tokens: string[] } }).logprobs.tokens).toHaveLength(6);
    const streamed = await both("/v1/completions", { ...body, stream: true });
    const events = async (r: Response) =>
      (await readSseData(r)).filter((d) => d !== "[DONE]").map((d) => choicesOf(JSON.parse(d)));
    expect(await events(streamed.via)).toEqual(await events(streamed.direct));
  });
});

describe("request fields", () => {
  const chat = { model: "m", max_tokens: 2, messages: [{ role: "user", content: "Hi" }] };

  it("an unknown field is refused by name", async () => {
    const res = await postJson(`${h.url}/v1/chat/completions`, { ...chat, frobnicate: true });
    expect(res.status).toBe(400);
    expect(await res.text()).toContain('unknown field \\"frobnicate\\"');
  });

  it("fields the gateway sets itself, or that would run code on the replica, are refused with the reason", async () => {
    for (const field of ["priority", "kv_transfer_params", "best_of", "chat_template", "logits_processors"]) {
      const res = await postJson(`${h.url}/v1/chat/completions`, { ...chat, [field]: 1 });
      expect(res.status, field).toBe(400);
      expect(await res.text()).toContain(`${field} is not accepted`);
    }
  });

  it("OpenAI platform fields are accepted and not forwarded; allow-listed vLLM fields pass", async () => {
    const res = await postJson(`${h.url}/v1/chat/completions`, {
      ...chat,
      store: false,
      metadata: { a: "b" },
      min_p: 0.1,
      ignore_eos: true,
    });
    expect(res.status).toBe(200);
    await expectIdle(h);
  });
});
