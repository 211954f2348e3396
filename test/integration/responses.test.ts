/**
 * The Responses API through the gateway (issue 23, part 1). POST /v1/responses read by the openai npm
 * client, and InferenceService.Respond through grpc-js, Connect and the SDK. REST: the Response
 * object, its event stream (through the client's own stream helper, which checks the events' order and
 * assembles the final response from them), instructions as a system turn, usage as the replica counted it
 * (its own vllm:*_tokens_total counters), typed errors for what kinfer does not serve, and a client that
 * leaves mid-stream or a replica that fails mid-stream leaving the gateway idle.
 */
import * as http from "node:http";
import * as http2 from "node:http2";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import OpenAI from "openai";
import { afterAll, beforeAll, expect, it } from "vitest";
import {
  FinishReason,
  InferenceService,
  Role,
  type StreamFinish,
} from "../../gen/es/kinfer/inference/v1/inference_pb.js";
import * as tsProto from "../../gen/grpc-js/kinfer/inference/v1/inference.js";
import { createKinferClient } from "../../sdk/src/client.js";
import { createNodeTransport } from "../../sdk/src/node.js";
import { type Harness, startHarness } from "../helpers/gateway-harness.js";
import { expectIdle, metricSum, waitFor } from "../helpers/idle.js";
import { postJson } from "../helpers/sse.js";

const MODEL = "m";
let h: Harness;
let openai: OpenAI;

beforeAll(async () => {
  h = await startHarness({ models: { [MODEL]: { stable: 1 } }, engine: { decodeBaseMs: 5 } });
  openai = new OpenAI({ baseURL: `${h.url}/v1`, apiKey: "none", maxRetries: 0 });
});
afterAll(() => h?.close());

/** The replica's own counts of prompt and generated tokens (an oracle independent of the stream). */
async function replicaTokens() {
  const page = (await h.all()[0]?.metricsText()) ?? "";
  return {
    prompt: metricSum(page, "vllm:prompt_tokens_total"),
    generated: metricSum(page, "vllm:generation_tokens_total"),
  };
}

it("answers a Response object: the text, incomplete at max_output_tokens, usage as the replica counted it", async () => {
  const before = await replicaTokens();
  const r = await openai.responses.create({
    model: MODEL,
    input: "Tell me about GPUs.",
    max_output_tokens: 7,
  });
  const after = await replicaTokens();
  expect(r.object).toBe("response");
  expect(r.id).toMatch(/^resp_/);
  expect(r.model).toBe(MODEL);
  expect(r.status).toBe("incomplete");
  expect(r.incomplete_details).toEqual({ reason: "max_output_tokens" });
  expect(r.output_text.length).toBeGreaterThan(0);
  expect(r.output).toHaveLength(1);
  expect(r.output[0]).toMatchObject({ type: "message", role: "assistant", status: "incomplete" });
  expect(r.usage?.output_tokens).toBe(7);
  expect(r.usage?.output_tokens).toBe(after.generated - before.generated);
  expect(r.usage?.input_tokens).toBe(after.prompt - before.prompt);
  expect(r.usage?.total_tokens).toBe((r.usage?.input_tokens ?? 0) + 7);
  await expectIdle(h);
});

it("streams the events vLLM sends, in order, numbered, and the client's stream helper assembles the same response", async () => {
  const stream = await openai.responses.create({
    model: MODEL,
    input: [{ role: "user", content: [{ type: "input_text", text: "Stream to me." }] }],
    max_output_tokens: 6,
    stream: true,
  });
  const events: { type: string; sequence_number: number }[] = [];
  let deltas = "";
  let doneText = "";
  let final: OpenAI.Responses.Response | undefined;
  for await (const e of stream) {
    events.push(e);
    if (e.type === "response.output_text.delta") deltas += e.delta;
    if (e.type === "response.output_text.done") doneText = e.text;
    if (e.type === "response.incomplete" || e.type === "response.completed") final = e.response;
  }
  const types = events.map((e) => e.type);
  expect(types.slice(0, 4)).toEqual([
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
  ]);
  expect(types.slice(-4)).toEqual([
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.incomplete",
  ]);
  expect(types.slice(4, -4).every((t) => t === "response.output_text.delta")).toBe(true);
  expect(events.map((e) => e.sequence_number)).toEqual(events.map((_, i) => i));
  expect(doneText).toBe(deltas);
  const finalText = (final?.output[0] as { content?: { text: string }[] } | undefined)?.content?.[0]?.text;
  expect(finalText).toBe(deltas);
  expect(final?.usage?.output_tokens).toBe(6);

  // The client's helper checks the events' order and builds the final response from them.
  const helper = openai.responses.stream({ model: MODEL, input: "Again.", max_output_tokens: 4 });
  const assembled = await helper.finalResponse();
  expect(assembled.output_text.length).toBeGreaterThan(0);
  expect(assembled.usage?.output_tokens).toBe(4);
  await expectIdle(h);
});

it("instructions are a system turn before the input (the replica counts their tokens)", async () => {
  const plain = await openai.responses.create({ model: MODEL, input: "Hi.", max_output_tokens: 1 });
  const framed = await openai.responses.create({
    model: MODEL,
    instructions: "You are a terse assistant that answers in one word.",
    input: "Hi.",
    max_output_tokens: 1,
  });
  expect(framed.instructions).toBe("You are a terse assistant that answers in one word.");
  expect(framed.usage?.input_tokens ?? 0).toBeGreaterThan((plain.usage?.input_tokens ?? 0) + 5);
});

it("what kinfer does not serve is a 400 naming it, and reaches no replica", async () => {
  const before = await replicaTokens();
  const cases: [unknown, RegExp][] = [
    [{ model: MODEL }, /input/],
    [{ model: MODEL, input: [] }, /input must not be empty/],
    [{ model: MODEL, input: "x", previous_response_id: "resp_1" }, /previous_response_id is not supported/],
    [{ model: MODEL, input: "x", tools: [{ type: "web_search" }] }, /tools are not supported/],
    [
      { model: MODEL, input: [{ role: "user", content: [{ type: "input_image", image_url: "http://x" }] }] },
      /images and files are not supported/,
    ],
    [{ model: MODEL, input: "x", reasoning: { effort: "high" } }, /reasoning/],
    [{ model: MODEL, input: "x", max_output_tokens: 0 }, /max_output_tokens/],
    [{ model: "nope", input: "x" }, /nope/],
  ];
  for (const [body, message] of cases) {
    const res = await postJson(`${h.url}/v1/responses`, body);
    expect([400, 404], JSON.stringify(body).slice(0, 60)).toContain(res.status);
    expect(((await res.json()) as { error: { message: string } }).error.message).toMatch(message);
  }
  expect(await replicaTokens()).toEqual(before);
  await expectIdle(h);
});

it("a replica that fails mid-stream ends the stream with response.failed; the gateway is idle", async () => {
  await h.setFaults(h.all(), { errorMidStream: 1, afterTokens: 2 });
  try {
    const stream = await openai.responses.create({
      model: MODEL,
      input: "x",
      max_output_tokens: 50,
      stream: true,
    });
    const types: string[] = [];
    for await (const e of stream) types.push(e.type);
    expect(types.at(-1)).toBe("response.failed");
    expect(types).not.toContain("response.completed");
  } finally {
    await h.setFaults(h.all(), { errorMidStream: 0 });
  }
  await expectIdle(h);
});

it("a client that leaves mid-stream (HTTP/1.1) leaves the gateway idle and the replica's work stopped", async () => {
  const body = JSON.stringify({
    model: MODEL,
    input: "a long answer",
    max_output_tokens: 2000,
    stream: true,
  });
  const req = http.request(`${h.url}/v1/responses`, {
    method: "POST",
    headers: { "content-type": "application/json" },
  });
  req.on("error", () => {});
  let seen = "";
  req.on("response", (res) => res.on("data", (c: Buffer) => (seen += c.toString())).on("error", () => {}));
  req.end(body);
  await waitFor(() => seen.includes("response.output_text.delta"), "the first deltas");
  req.destroy();
  await expectIdle(h);
  await waitFor(() => h.all()[0]?.engine.stats().running === 0, "the replica's sequence aborted");
});

it("InferenceService.Respond through grpc-js, Connect and the SDK: the same text and usage, incomplete at max_tokens", async () => {
  const input = [{ role: Role.USER, content: "Tell me about GPUs." }];
  const before = await replicaTokens();
  const connect = createClient(
    InferenceService,
    createConnectTransport({ baseUrl: h.url, httpVersion: "2" }),
  );
  let text = "";
  let finish: StreamFinish | undefined;
  for await (const res of connect.respond({
    model: MODEL,
    instructions: "Be brief.",
    input,
    sampling: { maxTokens: 5 },
  })) {
    if (res.event.case === "delta") text += res.event.value.text;
    if (res.event.case === "finish") finish = res.event.value;
  }
  const after = await replicaTokens();
  expect(text.length).toBeGreaterThan(0);
  expect(finish?.finishReason).toBe(FinishReason.LENGTH);
  expect(finish?.usage?.completionTokens).toBe(5);
  expect(finish?.usage?.promptTokens).toBe(after.prompt - before.prompt);

  const sdk = createKinferClient({ transport: createNodeTransport({ baseUrl: h.url }) });
  const viaSdk = await sdk
    .respond({ model: MODEL, instructions: "Be brief.", input, sampling: { maxTokens: 5 } })
    .collect();
  expect(viaSdk.finish?.usage?.completionTokens).toBe(5);
  expect(viaSdk.finish?.usage?.promptTokens).toBe(finish?.usage?.promptTokens);

  const client = new tsProto.InferenceServiceClient(
    h.url.replace("http://", ""),
    grpc.credentials.createInsecure(),
  );
  const events: tsProto.RespondResponse[] = [];
  await new Promise<void>((resolve, reject) => {
    const call = client.respond(
      tsProto.RespondRequest.fromPartial({
        model: MODEL,
        instructions: "Be brief.",
        input: [{ role: tsProto.Role.ROLE_USER, content: "Tell me about GPUs." }],
        sampling: { maxTokens: 5 },
      }),
    );
    call.on("data", (e: tsProto.RespondResponse) => events.push(e));
    call.on("end", resolve);
    call.on("error", reject);
  });
  client.close();
  const last = events.at(-1)?.event;
  expect(last?.$case).toBe("finish");
  if (last?.$case === "finish") expect(last.finish.usage?.promptTokens).toBe(finish?.usage?.promptTokens);

  // Bad input is INVALID_ARGUMENT before any replica works.
  const counts = await replicaTokens();
  for (const bad of [
    { model: MODEL, input: [] },
    { model: MODEL, input: [{ content: "no role" }] },
  ]) {
    const err = await (async () => {
      for await (const _ of connect.respond(bad));
    })().catch((e: unknown) => e);
    expect(ConnectError.from(err).code).toBe(Code.InvalidArgument);
  }
  expect(await replicaTokens()).toEqual(counts);
  await expectIdle(h);
});

it("a client that resets its HTTP/2 stream mid-stream leaves the gateway idle and the replica's work stopped", async () => {
  const session = http2.connect(h.url);
  try {
    const stream = session.request({
      ":method": "POST",
      ":path": "/v1/responses",
      "content-type": "application/json",
    });
    let seen = "";
    stream.on("data", (c: Buffer) => {
      seen += c.toString();
    });
    stream.on("error", () => {});
    stream.end(
      JSON.stringify({ model: MODEL, input: "a long answer", max_output_tokens: 2000, stream: true }),
    );
    await waitFor(() => seen.includes("response.output_text.delta"), "the first deltas");
    stream.close(http2.constants.NGHTTP2_CANCEL);
    await expectIdle(h);
    await waitFor(() => h.all()[0]?.engine.stats().running === 0, "the replica's sequence aborted");
  } finally {
    session.close();
  }
});
