/**
 * The simulator's /v1/responses over real HTTP, read by the official openai client: the Response object
 * and its event stream (through the client's stream helper, which checks the order of the events), the
 * engine's work in its token counters, vLLM's errors for bad input, and a client that leaves mid-stream
 * freeing the engine.
 */
import * as http from "node:http";
import OpenAI from "openai";
import { afterAll, beforeAll, expect, it } from "vitest";
import { type SimServer, startSimServer } from "../../../sim/http/sim-server.js";
import { metricSum, waitFor } from "../../helpers/idle.js";
import { postJson } from "../../helpers/sse.js";

const MODEL = "qwen";
let replica: SimServer;
let openai: OpenAI;

beforeAll(async () => {
  replica = await startSimServer({ model: MODEL, engine: { meanOutputTokens: 100_000, decodeBaseMs: 5 } });
  openai = new OpenAI({ baseURL: `${replica.url}/v1`, apiKey: "unused", maxRetries: 0 });
});
afterAll(() => replica.close());

const generated = async () => metricSum(await replica.metricsText(), "vllm:generation_tokens_total");

it("answers a Response object, incomplete at max_output_tokens, with the engine's usage", async () => {
  const before = await generated();
  const r = await openai.responses.create({
    model: MODEL,
    instructions: "Be brief.",
    input: "What is a GPU?",
    max_output_tokens: 5,
    metadata: { team: "search" },
  });
  expect(r.status).toBe("incomplete");
  expect(r.incomplete_details?.reason).toBe("max_output_tokens");
  expect(r.usage?.output_tokens).toBe(5);
  expect((await generated()) - before).toBe(5);
  expect(r.output_text.length).toBeGreaterThan(0);
  expect(r.instructions).toBe("Be brief.");
  expect(r.metadata).toEqual({ team: "search" });
});

it("streams the Responses events, and the client's stream helper assembles the response from them", async () => {
  const stream = openai.responses.stream({
    model: MODEL,
    input: [{ role: "user", content: "Hi" }],
    max_output_tokens: 4,
  });
  const types: string[] = [];
  stream.on("event", (e) => types.push(e.type));
  const final = await stream.finalResponse();
  expect(types[0]).toBe("response.created");
  expect(types.at(-1)).toBe("response.incomplete");
  expect(types.filter((t) => t === "response.output_text.delta")).toHaveLength(4);
  expect(final.usage?.output_tokens).toBe(4);
});

it("bad input gets vLLM-style errors", async () => {
  const post = (body: unknown) => postJson(`${replica.url}/v1/responses`, body);
  expect((await post({ model: MODEL })).status).toBe(400);
  expect((await post({ model: MODEL, input: [] })).status).toBe(400);
  expect((await post({ model: MODEL, input: "x", previous_response_id: "resp_x" })).status).toBe(404);
  expect((await post({ model: "other", input: "x" })).status).toBe(404);
});

it("a client that leaves mid-stream frees the engine", async () => {
  const req = http.request(`${replica.url}/v1/responses`, { method: "POST" });
  req.on("error", () => {});
  let seen = "";
  req.on("response", (res) => res.on("data", (c: Buffer) => (seen += c.toString())).on("error", () => {}));
  req.end(JSON.stringify({ model: MODEL, input: "long", max_output_tokens: 5000, stream: true }));
  await waitFor(() => seen.includes("response.output_text.delta"), "the first deltas");
  req.destroy();
  await waitFor(() => replica.engine.stats().running === 0, "the sequence aborted");
});
