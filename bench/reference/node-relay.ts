/**
 * The floor of a relay written in Node, as a reference for bench/gateway-overhead.ts: what any Node
 * process pays to carry a stream from a replica to a client, before kinfer does anything of its own.
 * Node's http and http2 servers in front of undici's dispatch API (the calls kinfer's relay makes),
 * round-robin over the replicas, each response chunk written as it arrives (the replica's socket paused
 * while the client's buffer is full). Three ways to relay:
 *
 * - OpenAI, bytes (default): the replica's bytes go to the client untouched, as nginx relays them.
 * - OpenAI, `--parse`: what a relay that understands tokens cannot skip: each SSE event parsed
 *   (eventsource-parser), its JSON parsed, and a chunk with the gateway's own id serialised and written,
 *   one write per event.
 * - gRPC and Connect (InferenceService/Generate, whatever the mode; Connect's binary streaming protocol
 *   when the request says application/connect+proto): the request decoded, each event parsed and its text
 *   written as a GenerateResponse delta in an envelope (@bufbuild/protobuf, as kinfer's surfaces encode
 *   it), then grpc-status in the trailers or Connect's end-of-stream message. No start or finish message.
 *
 * kinfer does all of this and more (admission, routing, accounting, metrics, first-token priority,
 * cancellation, timeouts). This does nothing else: no limits, no error mapping. Never a server to deploy.
 *
 * usage: node node-relay.mjs [--parse] REPLICA_URL...
 * It prints "node-relay: serving at http://HOST:PORT h2c http://HOST:PORT" once it listens.
 */
import * as http from "node:http";
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { parseArgs } from "node:util";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { createParser } from "eventsource-parser";
import { Agent, type Dispatcher } from "undici";
import {
  GenerateRequestSchema,
  GenerateResponseSchema,
} from "../../gen/es/kinfer/inference/v1/inference_pb.js";

const { values, positionals } = parseArgs({
  options: { parse: { type: "boolean", default: false } },
  allowPositionals: true,
});
if (positionals.length === 0) {
  console.error("usage: node-relay [--parse] REPLICA_URL...");
  process.exit(2);
}
const replicas = positionals.map((u) => u.replace(/\/+$/, ""));
// Idle connections dropped before the replicas drop theirs (5 s, as vLLM does).
const agent = new Agent({ connections: null, keepAliveTimeout: 4_000, headersTimeout: 0, bodyTimeout: 0 });
let next = 0;

const GENERATE = "/kinfer.inference.v1.InferenceService/Generate";

type Request = http.IncomingMessage | http2.Http2ServerRequest;
type Response = http.ServerResponse | http2.Http2ServerResponse;

/** How one stream is relayed: its response head, and what is written for each event of the replica's. */
interface Relaying {
  head(statusCode: number, requestId: string): void;
  /** undefined: relay the replica's bytes as they are. */
  event?(data: string): string | Uint8Array | undefined;
  end(): void;
}

function openAi(res: Response): Relaying {
  const id = `cmpl-${Math.random().toString(36).slice(2)}`;
  return {
    head: (statusCode, requestId) =>
      res.writeHead(statusCode, { "content-type": "text/event-stream", "x-request-id": requestId }),
    ...(values.parse && {
      event: (data: string) =>
        data === "[DONE]" ? "data: [DONE]\n\n" : `data: ${JSON.stringify({ ...JSON.parse(data), id })}\n\n`,
    }),
    end: () => res.end(),
  };
}

/** A GenerateResponse delta with `text`, in an envelope (flags 0, length, message). */
function deltaEnvelope(data: string): Uint8Array | undefined {
  if (data === "[DONE]") return undefined;
  const text = (JSON.parse(data) as { choices?: { text?: string }[] }).choices?.[0]?.text;
  if (typeof text !== "string" || text === "") return undefined;
  const message = toBinary(
    GenerateResponseSchema,
    create(GenerateResponseSchema, { event: { case: "delta", value: { text, tokenCount: 1 } } }),
  );
  const frame = new Uint8Array(5 + message.length);
  new DataView(frame.buffer).setUint32(1, message.length);
  frame.set(message, 5);
  return frame;
}

/** Connect's end-of-stream message: flags 2, an empty JSON object (no error, no trailers). */
const CONNECT_END = new Uint8Array([2, 0, 0, 0, 2, 0x7b, 0x7d]);

function grpc(res: Response, connect: boolean): Relaying {
  return {
    head: (_statusCode, requestId) =>
      res.writeHead(200, {
        "content-type": connect ? "application/connect+proto" : "application/grpc+proto",
        "x-request-id": requestId,
      }),
    event: deltaEnvelope,
    end() {
      if (connect) return void res.end(CONNECT_END);
      (res as http2.Http2ServerResponse).addTrailers({ "grpc-status": "0" });
      res.end();
    },
  };
}

/** undici's dispatch handler for one stream: writes what `relaying` makes of the replica's answer to `res`. */
function relayHandler(
  res: Response,
  relaying: Relaying,
  onAbort: (abort: () => void) => void,
): Dispatcher.DispatchHandler {
  let controller: Dispatcher.DispatchController | undefined;
  let ended = false;
  const write = (data: string | Uint8Array) => {
    if (!(res as http.ServerResponse).write(data) && controller !== undefined && !controller.paused) {
      controller.pause();
      res.once("drain", () => controller?.resume());
    }
  };
  const decoder = new TextDecoder();
  const transform = relaying.event;
  const parser =
    transform === undefined
      ? undefined
      : createParser({
          onEvent(message) {
            const out = transform(message.data);
            if (out !== undefined) write(out);
          },
        });
  return {
    onRequestStart(c) {
      controller = c;
      onAbort(() => {
        if (!ended) c.abort(new Error("client gone"));
      });
    },
    onResponseStart(_c, statusCode, headers) {
      relaying.head(statusCode, String(headers["x-request-id"] ?? ""));
    },
    onResponseData(_c, chunk) {
      if (parser === undefined) write(chunk);
      else parser.feed(decoder.decode(chunk, { stream: true }));
    },
    onResponseEnd() {
      ended = true;
      relaying.end();
    },
    onResponseError(_c, err) {
      ended = true;
      if (!res.headersSent) res.writeHead(502).end(String(err));
      else res.destroy();
    },
  };
}

function handle(req: Request, res: Response): void {
  const chunks: Buffer[] = [];
  req.on("data", (c: Buffer) => chunks.push(c));
  req.on("end", () => {
    const origin = replicas[next++ % replicas.length] as string;
    let aborted = false;
    let abort = () => {
      aborted = true;
    };
    res.on("close", () => abort());
    let body = Buffer.concat(chunks);
    let relaying: Relaying;
    if (req.url === GENERATE) {
      const r = fromBinary(GenerateRequestSchema, body.subarray(5));
      const maxTokens = r.sampling?.maxTokens ?? 16;
      body = Buffer.from(
        JSON.stringify({ model: r.model, prompt: r.prompt, max_tokens: maxTokens, stream: true }),
      );
      relaying = grpc(res, req.headers["content-type"] === "application/connect+proto");
    } else relaying = openAi(res);
    agent.dispatch(
      {
        origin,
        path: req.url === GENERATE ? "/v1/completions" : (req.url ?? "/"),
        method: "POST",
        body,
        headers: { "content-type": "application/json" },
      },
      relayHandler(res, relaying, (a) => {
        if (aborted) a();
        else abort = a;
      }),
    );
  });
}

const h1 = http.createServer({ keepAliveTimeout: 120_000 }, handle);
const h2 = http2.createServer({ settings: { maxConcurrentStreams: 2048 } }, handle);
await Promise.all([
  new Promise<void>((r) => h1.listen(0, "127.0.0.1", r)),
  new Promise<void>((r) => h2.listen(0, "127.0.0.1", r)),
]);
const port = (s: http.Server | http2.Http2Server) => (s.address() as AddressInfo).port;
console.log(`node-relay: serving at http://127.0.0.1:${port(h1)} h2c http://127.0.0.1:${port(h2)}`);
