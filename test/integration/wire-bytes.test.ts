/**
 * The same bytes to every client, whatever the relay does inside: the raw responses of seeded requests on
 * every surface (OpenAI SSE for chat and text completions with usage, over HTTP/1.1 with its chunked
 * framing; Connect and gRPC-Web over HTTP/1.1; gRPC over HTTP/2) are compared with the bytes the gateway
 * sent before the relay's fast path (fixtures/wire-bytes/, recorded from commit cccc04e with
 * KINFER_RECORD_WIRE=1). What differs per request is normalised first: request ids, the `created` clock,
 * Date and Server-Timing headers, and the durations in the finish message.
 */
import { readFileSync, writeFileSync } from "node:fs";
import * as http2 from "node:http2";
import { connect } from "node:net";
import { fromBinary, toBinary } from "@bufbuild/protobuf";
import { afterAll, beforeAll, expect, it } from "vitest";
import {
  GenerateRequestSchema,
  GenerateResponseSchema,
} from "../../gen/es/kinfer/inference/v1/inference_pb.js";
import { type Harness, startHarness } from "../helpers/gateway-harness.js";

const FIXTURES = new URL("fixtures/wire-bytes/", import.meta.url);
const RECORD = process.env.KINFER_RECORD_WIRE === "1";

let h: Harness;
beforeAll(async () => {
  h = await startHarness({ models: { m: { stable: 1 } } });
});
afterAll(() => h.close());

/** Ids, clocks and timings replaced by placeholders; everything else as sent. */
function normalise(text: string): string {
  return text
    .replace(/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/g, "<id>")
    .replace(/"created":\d+/g, '"created":<t>')
    .replace(/^date: .*$/gim, "date: <date>")
    .replace(/^server-timing: .*$/gim, "server-timing: <timing>");
}

function compare(name: string, actual: string): void {
  const file = new URL(name, FIXTURES);
  if (RECORD) writeFileSync(file, actual);
  expect(actual).toBe(readFileSync(file, "utf8"));
}

/** One HTTP/1.1 exchange on a raw socket; the response's bytes as latin1 (one char per byte). */
function rawHttp1(path: string, headers: Record<string, string>, body: Buffer | string): Promise<string> {
  const url = new URL(h.url);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(url.port), url.hostname);
    const chunks: Buffer[] = [];
    socket.on("data", (d) => chunks.push(d));
    socket.on("error", reject);
    socket.on("end", () => resolve(Buffer.concat(chunks).toString("latin1")));
    const data = typeof body === "string" ? Buffer.from(body) : body;
    const head = Object.entries({ ...headers, "content-length": String(data.length), connection: "close" })
      .map(([k, v]) => `${k}: ${v}\r\n`)
      .join("");
    socket.write(`POST ${path} HTTP/1.1\r\nhost: ${url.host}\r\n${head}\r\n`);
    socket.write(data); // no half-close: the server would take it for a client gone
  });
}

/** A Connect / gRPC envelope: flags, length, message. */
function envelope(flags: number, message: Uint8Array): Buffer {
  const head = Buffer.alloc(5);
  head.writeUInt8(flags, 0);
  head.writeUInt32BE(message.length, 1);
  return Buffer.concat([head, message]);
}

/** The envelopes of a body, each data message decoded with its durations cleared and encoded again. */
function normaliseEnvelopes(body: Buffer): string {
  const out: Buffer[] = [];
  for (let at = 0; at + 5 <= body.length; ) {
    const flags = body.readUInt8(at);
    const length = body.readUInt32BE(at + 1);
    let message: Uint8Array = body.subarray(at + 5, at + 5 + length);
    if ((flags & 0x80) === 0 && (flags & 0x02) === 0) {
      const m = fromBinary(GenerateResponseSchema, message);
      if (m.event.case === "finish") {
        m.event.value.timeToFirstToken = undefined;
        m.event.value.totalTime = undefined;
      }
      message = toBinary(GenerateResponseSchema, m);
    }
    out.push(envelope(flags, message));
    at += 5 + length;
  }
  return normalise(Buffer.concat(out).toString("latin1"));
}

/** Splits a raw HTTP/1.1 response into its head and its de-chunked body. */
function splitHttp1(raw: string): { head: string; body: Buffer } {
  const end = raw.indexOf("\r\n\r\n");
  const head = raw.slice(0, end);
  let rest = raw.slice(end + 4);
  if (!/transfer-encoding: chunked/i.test(head)) return { head, body: Buffer.from(rest, "latin1") };
  const parts: Buffer[] = [];
  for (;;) {
    const line = rest.indexOf("\r\n");
    const size = Number.parseInt(rest.slice(0, line), 16);
    if (size === 0) break;
    parts.push(Buffer.from(rest.slice(line + 2, line + 2 + size), "latin1"));
    rest = rest.slice(line + 2 + size + 2);
  }
  return { head, body: Buffer.concat(parts) };
}

const generate = toBinary(
  GenerateRequestSchema,
  (await import("@bufbuild/protobuf")).create(GenerateRequestSchema, {
    model: "m",
    prompt: "Tell me about batching.",
    sampling: { maxTokens: 12, seed: 7n },
  }),
);

it("OpenAI chat completions, streamed with usage: byte for byte, chunk framing included", async () => {
  const raw = await rawHttp1(
    "/v1/chat/completions",
    { "content-type": "application/json" },
    JSON.stringify({
      model: "m",
      stream: true,
      stream_options: { include_usage: true },
      seed: 7,
      max_tokens: 12,
      messages: [{ role: "user", content: "Tell me about batching." }],
    }),
  );
  compare("openai-chat.txt", normalise(raw));
});

it("OpenAI text completions, streamed: byte for byte", async () => {
  const raw = await rawHttp1(
    "/v1/completions",
    { "content-type": "application/json" },
    JSON.stringify({ model: "m", stream: true, seed: 7, max_tokens: 12, prompt: "Tell me about batching." }),
  );
  compare("openai-completions.txt", normalise(raw));
});

it("Connect and gRPC-Web over HTTP/1.1: the same envelopes and trailers", async () => {
  const path = "/kinfer.inference.v1.InferenceService/Generate";
  const connectRaw = splitHttp1(
    await rawHttp1(path, { "content-type": "application/connect+proto" }, envelope(0, generate)),
  );
  compare("connect.txt", `${normalise(connectRaw.head)}\n\n${normaliseEnvelopes(connectRaw.body)}`);
  const webRaw = splitHttp1(
    await rawHttp1(path, { "content-type": "application/grpc-web+proto" }, envelope(0, generate)),
  );
  compare("grpc-web.txt", `${normalise(webRaw.head)}\n\n${normaliseEnvelopes(webRaw.body)}`);
});

it("gRPC over HTTP/2: the same messages and trailers", async () => {
  const session = http2.connect(h.url);
  const stream = session.request({
    ":method": "POST",
    ":path": "/kinfer.inference.v1.InferenceService/Generate",
    "content-type": "application/grpc",
    te: "trailers",
  });
  const chunks: Buffer[] = [];
  let headers = "";
  let trailers = "";
  const strip = (hs: http2.IncomingHttpHeaders) =>
    Object.entries(hs)
      .filter(([k]) => k !== "date")
      .map(([k, v]) => `${k}: ${v}`)
      .join("\n");
  stream.on("response", (hs) => (headers = strip(hs)));
  stream.on("trailers", (hs) => (trailers = strip(hs)));
  stream.on("data", (d: Buffer) => chunks.push(d));
  stream.end(envelope(0, generate));
  await new Promise((resolve) => stream.on("close", resolve));
  session.close();
  compare("grpc.txt", `${normalise(headers)}\n\n${normaliseEnvelopes(Buffer.concat(chunks))}\n\n${trailers}`);
});
