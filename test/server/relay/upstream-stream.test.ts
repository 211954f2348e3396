/**
 * What the gateway sends to vLLM: OpenAI fields it does not interpret pass through unchanged; the fields
 * it owns (model, stream, stream_options, max_tokens) are always its own.
 */
import { expect, it } from "vitest";
import { upstreamBody } from "../../../server/relay/upstream-stream.js";
import type { InferenceRequest } from "../../../server/request/inference-request.js";

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
