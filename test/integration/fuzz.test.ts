/**
 * 10,000 fuzzed inputs to the inference and admin APIs of a live gateway (seeded, so a failure replays):
 * random bytes to every endpoint under every content type (gRPC over HTTP/2 included), and hostile but
 * well-formed messages (values of the wrong type, out of range, huge, NaN, control characters, unknown enum
 * numbers, path-like names, wrong envelopes). Every answer must be an error of the caller's making or a
 * success, read from where each protocol puts its status: the HTTP status, a Connect error body or
 * end-of-stream message, gRPC-Web's trailer frame, gRPC's HTTP/2 trailers. Never INTERNAL, UNKNOWN,
 * DATA_LOSS, nor UNAVAILABLE or DEADLINE_EXCEEDED (two healthy replicas with room to spare: either would
 * be a failure dressed as a retryable one), never HTTP 5xx, never a stack trace, a file path, a library
 * name or a replica's address; and the process must serve normally afterwards.
 */
import { connect as http2Connect } from "node:http2";
import {
  create,
  type DescMessage,
  fromJson,
  type JsonValue,
  type Message,
  toBinary,
} from "@bufbuild/protobuf";
import { afterAll, beforeAll, expect, it } from "vitest";
import { createRng } from "../../common/random.js";
import {
  ChatRequestSchema,
  GenerateRequestSchema,
  ListModelsRequestSchema,
} from "../../gen/es/kinfer/inference/v1/inference_pb.js";
import { type Harness, startHarness } from "../helpers/gateway-harness.js";

const TOKEN = "admin-token-for-fuzzing-0123456789";
const INPUTS = 10_000;
let h: Harness;

beforeAll(async () => {
  h = await startHarness({
    models: { m: { stable: 2 } },
    // Small generations, so that the inputs that are valid finish fast.
    config: {
      admin: { host: "127.0.0.1", port: 0, token: TOKEN },
      limits: { maxTokens: 8, defaultMaxTokens: 4, maxRequestBytes: 256 * 1024 },
    },
  });
});
afterAll(() => h.close());

const rng = createRng(20261129);
const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rng() * xs.length)] as T;
const int = (n: number) => Math.floor(rng() * n);

function randomBytes(max: number): Uint8Array {
  const out = new Uint8Array(int(max));
  for (let i = 0; i < out.length; i++) out[i] = int(256);
  return out;
}

/** Values that are wrong in some way for almost any field. */
const HOSTILE: readonly unknown[] = [
  null,
  -1,
  0,
  1,
  2 ** 31,
  2 ** 53 + 1,
  -(2 ** 63),
  1e308,
  "NaN",
  "Infinity",
  "-0",
  "",
  " ",
  "\u0000",
  "\u202e\ud800",
  "../../etc/passwd",
  "%00%2e%2e",
  "x".repeat(10_000),
  true,
  [],
  [null],
  {},
  { $ref: "#" },
  { __proto__: { polluted: true } },
  "1.5s",
  "-5s",
  "99999999999s",
  "ROUTING_ALGORITHM_PREFIX_AWARE",
  "PRIORITY_CRITICAL",
  12345,
];

/** Mutates a valid message: some fields get hostile values, some get added or removed. */
function mutate(message: Record<string, unknown>, fields: readonly string[]): Record<string, unknown> {
  const out: Record<string, unknown> = structuredClone(message);
  const changes = 1 + int(3);
  for (let i = 0; i < changes; i++) {
    const field = pick(fields);
    const path = field.split(".");
    let target = out;
    for (const p of path.slice(0, -1)) {
      if (typeof target[p] !== "object" || target[p] === null) target[p] = {};
      target = target[p] as Record<string, unknown>;
    }
    const last = path.at(-1) as string;
    if (rng() < 0.1) delete target[last];
    // A copy: a later change inside it must not change HOSTILE's own value (or make it hold itself).
    else target[last] = structuredClone(pick(HOSTILE));
  }
  if (rng() < 0.1) out[`unknown_${int(100)}`] = structuredClone(pick(HOSTILE));
  return out;
}

const GENERATE = { model: "m", prompt: "hello", sampling: { maxTokens: 2 } };
const GENERATE_FIELDS = [
  "model",
  "prompt",
  "sampling.maxTokens",
  "sampling.temperature",
  "sampling.topP",
  "sampling.topK",
  "sampling.stop",
  "sampling.seed",
  "routing.version",
  "routing.affinityKey",
  "routing.priority",
];
const CHAT = { model: "m", messages: [{ role: "ROLE_USER", content: "hi" }], sampling: { maxTokens: 2 } };
const CHAT_FIELDS = [
  "model",
  "messages",
  "messages.0",
  "sampling.maxTokens",
  "sampling.stop",
  "sampling.topP",
];
const OPENAI = { model: "m", messages: [{ role: "user", content: "hi" }], max_tokens: 2, stream: true };
const OPENAI_FIELDS = [
  "model",
  "messages",
  "max_tokens",
  "stream",
  "stream_options",
  "temperature",
  "top_p",
  "stop",
  "n",
  "user",
  "logprobs",
  "prompt",
];
const RESPONSES = {
  model: "m",
  input: [{ role: "user", content: "hi" }],
  max_output_tokens: 2,
  stream: true,
};
const RESPONSES_FIELDS = [
  "model",
  "input",
  "input.0",
  "input.0.content",
  "instructions",
  "max_output_tokens",
  "stream",
  "text",
  "metadata",
];
const EMBEDDINGS = { model: "m", input: ["hi", "there"], encoding_format: "base64" };
const EMBEDDINGS_FIELDS = [
  "model",
  "input",
  "input.0",
  "encoding_format",
  "dimensions",
  "truncate_prompt_tokens",
];

const ADMIN: readonly [string, Record<string, unknown>, readonly string[]][] = [
  [
    "SetTrafficSplit",
    { model: "m", weights: [{ version: "stable", weight: 1 }] },
    ["model", "weights", "weights.0"],
  ],
  [
    "SetRoutingPolicy",
    { model: "m", policy: { algorithm: "ROUTING_ALGORITHM_ROUND_ROBIN" } },
    [
      "model",
      "policy.algorithm",
      "policy.queueThreshold",
      "policy.kvCacheThreshold",
      "policy.signalMaxAge",
      "policy.weights",
    ],
  ],
  ["DrainReplica", { replicaId: "x" }, ["replicaId"]],
  ["UndrainReplica", { replicaId: "x" }, ["replicaId"]],
  ["GetModel", { model: "m" }, ["model"]],
  ["GetRoutingPolicy", { model: "m" }, ["model"]],
  [
    "CreateApiKey",
    { tenant: "t" },
    ["tenant", "allowedModels", "limits.requestsPerMinute", "limits.tokensPerMinute"],
  ],
  ["RevokeApiKey", { id: "k" }, ["id"]],
  ["ListApiKeys", {}, ["tenant", "includeRevoked"]],
];

/** The gRPC methods' messages: schema, a valid message (JSON), the fields to mutate. */
const GRPC_MESSAGES = {
  Generate: [GenerateRequestSchema, GENERATE, GENERATE_FIELDS],
  Chat: [ChatRequestSchema, CHAT, CHAT_FIELDS],
  ListModels: [ListModelsRequestSchema, {}, ["unknown"]],
} as const satisfies Record<string, readonly [DescMessage, Record<string, unknown>, readonly string[]]>;

/**
 * A gRPC envelope around `message` in the content type's codec: JSON as it is; binary where the mutated
 * JSON still reads as the message (hostile values the JSON reader refuses leave the valid message).
 */
function grpcMessage(schema: DescMessage, message: Record<string, unknown>, type: string): Uint8Array {
  if (type.endsWith("+json")) return envelope(new TextEncoder().encode(JSON.stringify(message)), false);
  let decoded: Message;
  try {
    decoded = fromJson(schema, message as JsonValue, { ignoreUnknownFields: true });
  } catch {
    decoded = create(schema);
  }
  return envelope(toBinary(schema, decoded), false);
}

/** A Connect streaming envelope around a message (flags 0), or a deliberately wrong one. */
function envelope(body: Uint8Array, wrong: boolean): Uint8Array {
  const out = new Uint8Array(5 + body.length);
  const view = new DataView(out.buffer);
  out[0] = wrong ? int(256) : 0;
  view.setUint32(1, wrong ? int(2 ** 32) : body.length);
  out.set(body, 5);
  return out;
}

interface Input {
  url: string;
  headers: Record<string, string>;
  body: Uint8Array | string;
  /** Sent over one HTTP/2 (h2c) connection as gRPC clients do, with trailers read; else with fetch. */
  grpc?: boolean;
  /** The caller's own deadline cannot be met (a nanosecond, a millisecond): DEADLINE_EXCEEDED is its answer. */
  shortDeadline?: boolean;
}

function nextInput(): Input {
  const enc = (v: unknown) => new TextEncoder().encode(JSON.stringify(v));
  const inference = `${h.url}/kinfer.inference.v1.InferenceService`;
  const admin = `${h.gateway.adminUrl}/kinfer.admin.v1.AdminService`;
  const auth = { authorization: `Bearer ${TOKEN}` };
  const kind = rng();
  if (kind < 0.1) {
    // gRPC: random bytes, a well-formed envelope around random bytes, or (half the time) a message the
    // handlers run: a mutated request in the content type's codec, with a deadline valid or not.
    const method = pick(["Generate", "Chat", "ListModels"] as const);
    const type = pick(["application/grpc", "application/grpc+proto", "application/grpc+json"]);
    const headers: Record<string, string> = { "content-type": type };
    if (rng() < 0.5) {
      const [schema, valid, fields] = GRPC_MESSAGES[method];
      const message = mutate(valid, fields);
      const timeout = rng() < 0.5 ? pick(["5S", "1n", "1m", "99999999H", "abc", "-1S", ""]) : undefined;
      if (timeout !== undefined) headers["grpc-timeout"] = timeout;
      return {
        url: `/kinfer.inference.v1.InferenceService/${method}`,
        headers,
        body: grpcMessage(schema, message, type),
        grpc: true,
        shortDeadline: timeout === "1n" || timeout === "1m",
      };
    }
    const payload = randomBytes(512);
    return {
      url: `/kinfer.inference.v1.InferenceService/${method}`,
      headers,
      body: rng() < 0.5 ? payload : envelope(payload, rng() < 0.2),
      grpc: true,
    };
  }
  if (kind < 0.35) {
    // Random bytes anywhere, under any content type.
    const url = pick([
      `${inference}/Generate`,
      `${inference}/Chat`,
      `${inference}/ListModels`,
      `${inference}/Respond`,
      `${inference}/Embed`,
      `${h.url}/v1/chat/completions`,
      `${h.url}/v1/completions`,
      `${h.url}/v1/responses`,
      `${h.url}/v1/embeddings`,
      `${admin}/${pick(ADMIN)[0]}`,
      `${admin}/ListModels`,
      `${admin}/WatchState`,
    ]);
    const type = pick([
      "application/json",
      "application/proto",
      "application/connect+json",
      "application/connect+proto",
      "application/grpc-web+proto",
      "text/plain",
      "",
    ]);
    return {
      url,
      headers: { "content-type": type, ...(url.startsWith(admin) ? auth : {}) },
      body: randomBytes(2048),
    };
  }
  if (kind < 0.55) {
    const [method, valid, fields] =
      rng() < 0.5 ? ["Generate", GENERATE, GENERATE_FIELDS] : ["Chat", CHAT, CHAT_FIELDS];
    const message = enc(mutate(valid, fields));
    return {
      url: `${inference}/${method}`,
      headers: { "content-type": "application/connect+json", "connect-protocol-version": "1" },
      body: envelope(message, rng() < 0.1),
    };
  }
  if (kind < 0.65) {
    // The Responses API and embeddings, mutated.
    const responses = rng() < 0.5;
    const body = responses ? mutate(RESPONSES, RESPONSES_FIELDS) : mutate(EMBEDDINGS, EMBEDDINGS_FIELDS);
    return {
      url: `${h.url}/v1/${responses ? "responses" : "embeddings"}`,
      headers: { "content-type": "application/json" },
      body: rng() < 0.05 ? JSON.stringify(body).slice(0, int(40)) : JSON.stringify(body),
    };
  }
  if (kind < 0.8) {
    const chat = rng() < 0.5;
    const body = mutate(chat ? OPENAI : { ...OPENAI, messages: undefined, prompt: "hi" }, OPENAI_FIELDS);
    return {
      url: `${h.url}/v1/${chat ? "chat/completions" : "completions"}`,
      headers: { "content-type": "application/json" },
      body: rng() < 0.05 ? JSON.stringify(body).slice(0, int(40)) : JSON.stringify(body),
    };
  }
  const [method, valid, fields] = pick(ADMIN);
  return {
    url: `${admin}/${method}`,
    headers: { "content-type": "application/json", "connect-protocol-version": "1", ...auth },
    body: JSON.stringify(mutate(valid, fields)),
  };
}

/** gRPC status codes that must never reach a client here (2 UNKNOWN, 4, 13 INTERNAL, 14, 15 DATA_LOSS). */
const GRPC_FAILURES = new Set(["2", "4", "13", "14", "15"]);
/** Connect codes likewise. */
const CONNECT_FAILURES = new Set(["internal", "unknown", "data_loss", "unavailable", "deadline_exceeded"]);

/** One gRPC call on an h2c session: the HTTP status, the grpc-status (trailers or trailers-only headers). */
function grpcCall(
  session: ReturnType<typeof http2Connect>,
  input: Input,
): Promise<{ status: number; grpcStatus: string; text: string }> {
  return new Promise((resolve, reject) => {
    const stream = session.request({
      ":method": "POST",
      ":path": input.url,
      te: "trailers",
      ...input.headers,
    });
    let status = 0;
    let grpcStatus = "";
    const chunks: Buffer[] = [];
    stream.setTimeout(15_000, () => stream.close());
    stream.on("response", (headers) => {
      status = Number(headers[":status"]);
      grpcStatus = String(headers["grpc-status"] ?? "");
    });
    stream.on("trailers", (trailers) => {
      grpcStatus = String(trailers["grpc-status"] ?? grpcStatus);
    });
    stream.on("data", (d: Buffer) => chunks.push(d));
    // On close, not end: a stream reset (or closed by the timeout above) ends without "end", and is then
    // reported (no grpc-status) instead of hanging the test.
    stream.on("close", () => resolve({ status, grpcStatus, text: Buffer.concat(chunks).toString("latin1") }));
    stream.on("error", reject);
    stream.end(input.body);
  });
}

/** What must never reach a client. */
const LEAKS = [
  /\bat \S+ \(/, // a stack frame
  /\.ts:\d+/,
  /node_modules/,
  /\/work\/|\/home\/|\/tmp\//,
  /undici|TypeError|ReferenceError|ECONNREFUSED|ECONNRESET/,
];

it(`${INPUTS} fuzzed inputs: no INTERNAL, no 500, nothing internal leaked, the gateway unharmed`, async () => {
  const replicaHosts = h.all().map((r) => new URL(r.url).host);
  const session = http2Connect(h.url);
  session.on("error", () => {});
  const problems: string[] = [];
  const outcomes = new Map<string, number>();
  let done = 0;
  const worker = async () => {
    while (done < INPUTS) {
      done++;
      const input = nextInput();
      let status = 0;
      let text = "";
      let grpcStatus = "";
      try {
        if (input.grpc) {
          ({ status, grpcStatus, text } = await grpcCall(session, input));
        } else {
          const res = await fetch(input.url, {
            method: "POST",
            headers: input.headers,
            body: input.body,
            signal: AbortSignal.timeout(15_000),
          });
          status = res.status;
          text = await res.text();
          // gRPC-Web: a trailers-only answer in the headers, else the trailer frame at the body's end.
          grpcStatus = res.headers.get("grpc-status") ?? /grpc-status:\s*(\d+)/i.exec(text)?.[1] ?? "";
        }
      } catch (err) {
        problems.push(`${input.url}: no answer: ${(err as Error).message}`);
        continue;
      }
      // Connect: a unary error body, or the error of a stream's end message.
      const connectCode = /"code"\s*:\s*"([a-z_]+)"/.exec(text)?.[1] ?? "";
      const key = `${status} ${connectCode}${grpcStatus !== "" ? ` grpc-status ${grpcStatus}` : ""}`;
      outcomes.set(key, (outcomes.get(key) ?? 0) + 1);
      if (status >= 500) problems.push(`${input.url}: HTTP ${status}: ${text.slice(0, 200)}`);
      if (CONNECT_FAILURES.has(connectCode))
        problems.push(`${input.url}: ${connectCode}: ${text.slice(0, 200)}`);
      // A gRPC call always ends with a status (a stream reset without one is what a client sees as INTERNAL).
      if (input.grpc && grpcStatus === "")
        problems.push(
          `${input.url}: no grpc-status (${JSON.stringify(input.headers)}): ${text.slice(0, 200)}`,
        );
      if (GRPC_FAILURES.has(grpcStatus) && !(grpcStatus === "4" && input.shortDeadline))
        problems.push(`${input.url}: grpc-status ${grpcStatus}: ${text.slice(0, 200)}`);
      for (const leak of [...LEAKS, ...replicaHosts.map((host) => new RegExp(host.replace(/\./g, "\\.")))]) {
        if (leak.test(text)) problems.push(`${input.url}: leaks ${leak}: ${text.slice(0, 200)}`);
      }
    }
  };
  await Promise.all(Array.from({ length: 16 }, worker));
  session.close();
  expect(problems.slice(0, 20)).toEqual([]);
  // Each protocol's status was read: gRPC trailers and gRPC-Web trailer frames among them.
  expect([...outcomes.keys()].some((k) => k.includes("grpc-status 3"))).toBe(true);
  // gRPC requests reached the handlers: some were served.
  expect([...outcomes.keys()].some((k) => k.startsWith("200 ") && k.includes("grpc-status 0"))).toBe(true);
  // The inputs reached the gateway's validation, not only its parsers: several outcomes were seen.
  expect(outcomes.size).toBeGreaterThan(5);
  // Unharmed: it still serves a normal request and its health.
  const res = await fetch(`${h.url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: "m", prompt: "still there?", max_tokens: 2 }),
  });
  expect(res.status).toBe(200);
  expect(h.gateway.pipeline.inFlight).toBe(0);
}, 300_000);
