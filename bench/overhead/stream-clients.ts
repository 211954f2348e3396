/**
 * The benchmark's clients, one per surface the gateway serves: OpenAI SSE (undici, HTTP/1.1, one
 * connection per stream as most OpenAI clients use), Connect and gRPC-Web (connect-node, HTTP/1.1, as
 * browsers and most Connect clients use) and gRPC (connect-node, HTTP/2, one session for all streams).
 * Each runs one streaming completion and reports its timing; tokens are counted as the client sees them
 * (text deltas), the same way for every target, so that CPU per relayed token compares across them.
 */
import { setMaxListeners } from "node:events";
import * as http2 from "node:http2";
import { createClient } from "@connectrpc/connect";
import {
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
  Http2SessionManager,
} from "@connectrpc/connect-node";
import { Agent, request } from "undici";
import { InferenceService } from "../../gen/es/kinfer/inference/v1/inference_pb.js";

export type Surface = "openai" | "connect" | "grpc" | "grpc-web";

const wallClock = () => performance.timeOrigin + performance.now();

export interface Sample {
  /** The request's id (x-request-id), which the replica's /sim/traces are keyed by. */
  id: string;
  sentAt: number;
  firstAt: number;
  gaps: number[];
  tokens: number;
}

export interface StreamClient {
  /** One streaming completion of `maxTokens` tokens; undefined if it failed. */
  stream(i: number, maxTokens: number): Promise<Sample | undefined>;
  close(): Promise<void>;
}

const prompt = (i: number) => `Request ${i}: tell me about batching.`;

/** Token timing, as the client's own reads see it. */
function timing() {
  let firstAt = 0;
  let last = 0;
  let tokens = 0;
  const gaps: number[] = [];
  return {
    token(now: number) {
      tokens++;
      if (firstAt === 0) firstAt = now;
      else gaps.push(now - last);
      last = now;
    },
    sample: (id: string, sentAt: number): Sample => ({ id, sentAt, firstAt, gaps, tokens }),
  };
}

export function createStreamClient(surface: Surface, baseUrl: string): StreamClient {
  return surface === "openai" ? openAiClient(baseUrl) : connectClient(surface, baseUrl);
}

function openAiClient(baseUrl: string): StreamClient {
  // Idle connections dropped before the replicas (direct) or the proxies drop theirs.
  const agent = new Agent({ connections: null, keepAliveTimeout: 4_000, headersTimeout: 0, bodyTimeout: 0 });
  return {
    async stream(i, maxTokens) {
      const sentAt = wallClock();
      const res = await request(`${baseUrl}/v1/completions`, {
        method: "POST",
        dispatcher: agent,
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model: "m", prompt: prompt(i), max_tokens: maxTokens, stream: true }),
      });
      if (res.statusCode !== 200) {
        const text = await res.body.text();
        if (process.env.KINFER_BENCH_DEBUG)
          console.error(`failure: HTTP ${res.statusCode} ${text.slice(0, 200)}`);
        return undefined;
      }
      const t = timing();
      let buffered = "";
      for await (const chunk of res.body) {
        const now = wallClock();
        buffered += (chunk as Buffer).toString("utf8");
        let end = buffered.indexOf("\n\n");
        while (end !== -1) {
          const event = buffered.slice(0, end);
          buffered = buffered.slice(end + 2);
          end = buffered.indexOf("\n\n");
          if (event.includes('"text":"') && !event.includes('"text":""')) t.token(now);
        }
      }
      return t.sample(String(res.headers["x-request-id"]), sentAt);
    },
    close: () => agent.close(),
  };
}

/**
 * A connect-node transport, and how to close it: an HTTP/2 transport's connection is closed here, or it
 * would keep the process alive until connect-node's idle timeout (15 minutes).
 */
function transportOf(surface: Exclude<Surface, "openai">, baseUrl: string, httpVersion: "1.1" | "2") {
  const sessionManager = httpVersion === "2" ? new Http2SessionManager(baseUrl) : undefined;
  const options = { baseUrl, readMaxBytes: 16 * 1024 * 1024, ...(sessionManager && { sessionManager }) };
  const close = () => sessionManager?.abort();
  if (surface === "grpc") return { transport: createGrpcTransport(options), close };
  if (surface === "grpc-web")
    return { transport: createGrpcWebTransport({ ...options, httpVersion }), close };
  return { transport: createConnectTransport({ ...options, httpVersion }), close };
}

function connectClient(surface: Exclude<Surface, "openai">, baseUrl: string): StreamClient {
  // gRPC needs HTTP/2 (one connection for every stream, as gRPC clients do); the others use HTTP/1.1.
  const { transport, close } = transportOf(surface, baseUrl, surface === "grpc" ? "2" : "1.1");
  const client = createClient(InferenceService, transport);
  return {
    async stream(i, maxTokens) {
      const sentAt = wallClock();
      let id = "";
      const t = timing();
      try {
        for await (const res of client.generate(
          { model: "m", prompt: prompt(i), sampling: { maxTokens } },
          { onHeader: (h) => (id = h.get("x-request-id") ?? "") },
        )) {
          if (res.event.case === "delta" && res.event.value.text !== "") t.token(wallClock());
        }
      } catch (err) {
        if (process.env.KINFER_BENCH_DEBUG) console.error("failure:", String(err));
        return undefined;
      }
      return t.sample(id, sentAt);
    },
    close: async () => close(),
  };
}

/**
 * Opens `count` streams over cleartext HTTP/2 (`perSession` per connection, so that 10,000 streams fit in
 * the file-descriptor limit) and resolves once each has received its first token; `close` cancels them.
 */
export async function openStreams(
  surface: Surface,
  h2Url: string,
  count: number,
  perSession: number,
  timeoutMs: number,
): Promise<{ opened: number; close(): void }> {
  const control = new AbortController();
  setMaxListeners(0, control.signal); // one listener per stream
  const sessions: http2.ClientHttp2Session[] = [];
  const groups = Math.ceil(count / perSession);
  const transports =
    surface === "openai" ? [] : Array.from({ length: groups }, () => transportOf(surface, h2Url, "2"));
  const clients = transports.map((t) => createClient(InferenceService, t.transport));
  if (surface === "openai")
    for (let g = 0; g < groups; g++) {
      const session = http2.connect(h2Url);
      session.on("error", () => {});
      sessions.push(session);
    }
  let opened = 0;
  const first = (i: number) =>
    new Promise<void>((resolve) => {
      const session = sessions[Math.floor(i / perSession)];
      const client = clients[Math.floor(i / perSession)];
      if (session !== undefined) {
        const stream = session.request({
          ":method": "POST",
          ":path": "/v1/completions",
          "content-type": "application/json",
        });
        stream.on("error", () => resolve());
        stream.on("close", () => resolve());
        stream.on("data", () => {
          opened++;
          resolve();
          stream.removeAllListeners("data");
          stream.on("data", () => {});
        });
        stream.end(JSON.stringify({ model: "m", prompt: prompt(i), max_tokens: 8000, stream: true }));
        control.signal.addEventListener("abort", () => stream.close(http2.constants.NGHTTP2_CANCEL));
        return;
      }
      (async () => {
        let counted = false;
        if (client === undefined) return;
        for await (const res of client.generate(
          { model: "m", prompt: prompt(i), sampling: { maxTokens: 8000 } },
          { signal: control.signal },
        )) {
          if (res.event.case === "delta" && !counted) {
            counted = true;
            opened++;
            resolve();
          }
        }
      })()
        .catch((err: unknown) => {
          if (process.env.KINFER_BENCH_DEBUG && !control.signal.aborted)
            console.error("failure:", String(err));
        })
        .finally(resolve);
    });
  const all = Promise.all(Array.from({ length: count }, (_, i) => first(i)));
  await Promise.race([all, new Promise((r) => setTimeout(r, timeoutMs))]);
  return {
    opened,
    close() {
      control.abort();
      for (const s of sessions) s.destroy();
      for (const t of transports) t.close();
    },
  };
}
