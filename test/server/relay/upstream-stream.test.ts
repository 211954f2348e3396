/**
 * What the gateway sends to vLLM: OpenAI fields it does not interpret pass through unchanged; the fields
 * it owns (model, stream, stream_options, max_tokens) are always its own. And a request aborted before
 * its replica answered is given up at once, wherever undici holds it.
 */
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { Agent } from "undici";
import { expect, it } from "vitest";
import { openUpstream, upstreamBody } from "../../../server/relay/upstream-stream.js";
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
