/**
 * The inference client: one call to make it, then generate, chat and respond (streams), embed and listModels. The
 * transport decides the protocol (see "@kinfer/sdk/node" and "@kinfer/sdk/web"); the client adds the API
 * key, a default timeout and typed errors. Only embed and listModels, which have no side effects, are
 * retried.
 */
import type { MessageInitShape } from "@bufbuild/protobuf";
import { type CallOptions, type Client, createClient, type Transport } from "@connectrpc/connect";
import {
  type ChatRequestSchema,
  type EmbedRequestSchema,
  type EmbedResponse,
  type GenerateRequestSchema,
  InferenceService,
  type ModelInfo,
  type RespondRequestSchema,
} from "../../gen/es/kinfer/inference/v1/inference_pb.js";
import { KinferError } from "./errors.js";
import { type EventStream, eventStream } from "./event-stream.js";

export interface KinferClientOptions {
  /** From createNodeTransport ("@kinfer/sdk/node") or createWebTransport ("@kinfer/sdk/web"). */
  transport: Transport;
  /** Sent as `authorization: Bearer <apiKey>` when set. */
  apiKey?: string;
  /** Deadline of every call, in ms, unless the call sets its own. Default: none. */
  timeoutMs?: number;
  /** Attempts of idempotent calls (embed, listModels) on retryable errors. Default 3. */
  maxAttempts?: number;
}

/** Options of one call. */
export interface KinferCallOptions {
  /** Cancels the call (and the GPU work it started). */
  signal?: AbortSignal;
  /** Overrides the client's timeoutMs. */
  timeoutMs?: number;
  /** Extra request headers, e.g. { "x-session-id": "..." }. */
  headers?: Record<string, string>;
}

export interface KinferClient {
  /** Streams the completion of a prompt. */
  generate(request: MessageInitShape<typeof GenerateRequestSchema>, options?: KinferCallOptions): EventStream;
  /** Streams the reply to a conversation. */
  chat(request: MessageInitShape<typeof ChatRequestSchema>, options?: KinferCallOptions): EventStream;
  /**
   * Streams the response to instructions and input turns (the Responses API's shape; a finish with
   * FINISH_REASON_LENGTH is an incomplete response, cut at sampling.maxTokens).
   */
  respond(request: MessageInitShape<typeof RespondRequestSchema>, options?: KinferCallOptions): EventStream;
  /** The embedding vector of each input, in order (`embeddings[i].values` for `inputs[i]`). */
  embed(
    request: MessageInitShape<typeof EmbedRequestSchema>,
    options?: KinferCallOptions,
  ): Promise<EmbedResponse>;
  /** The models this key may use. */
  listModels(options?: KinferCallOptions): Promise<ModelInfo[]>;
  /** The generated Connect client, for anything else. */
  readonly raw: Client<typeof InferenceService>;
}

/** Builds Connect call options from the client's defaults and the call's own. */
export function callOptions(
  defaults: { apiKey?: string | undefined; timeoutMs?: number | undefined },
  options: KinferCallOptions = {},
): CallOptions {
  const headers = new Headers(options.headers);
  if (defaults.apiKey !== undefined) headers.set("authorization", `Bearer ${defaults.apiKey}`);
  const timeoutMs = options.timeoutMs ?? defaults.timeoutMs;
  return {
    headers,
    ...(options.signal !== undefined ? { signal: options.signal } : {}),
    ...(timeoutMs !== undefined ? { timeoutMs } : {}),
  };
}

/**
 * Creates a client.
 *
 * @example
 * import { createKinferClient } from "@kinfer/sdk";
 * import { createNodeTransport } from "@kinfer/sdk/node";
 * const kinfer = createKinferClient({ transport: createNodeTransport({ baseUrl: "http://127.0.0.1:8080" }) });
 * const { text } = await kinfer.generate({ model: "llama-3-8b", prompt: "Hello" }).collect();
 */
export function createKinferClient(options: KinferClientOptions): KinferClient {
  const raw = createClient(InferenceService, options.transport);
  const maxAttempts = options.maxAttempts ?? 3;
  /** Runs a call without side effects, again on retryable errors (after retryAfter, or a backoff). */
  async function retrying<T>(call: KinferCallOptions | undefined, run: () => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await run();
      } catch (err) {
        const e = KinferError.from(err);
        if (!e.retryable || attempt >= maxAttempts || call?.signal?.aborted) throw e;
        await new Promise((r) => setTimeout(r, e.retryAfterMs ?? 100 * 2 ** attempt));
      }
    }
  }
  return {
    raw,
    generate: (request, call) => eventStream(() => raw.generate(request, callOptions(options, call))),
    chat: (request, call) => eventStream(() => raw.chat(request, callOptions(options, call))),
    respond: (request, call) => eventStream(() => raw.respond(request, callOptions(options, call))),
    embed: (request, call) => retrying(call, () => raw.embed(request, callOptions(options, call))),
    listModels: (call) =>
      retrying(call, async () => (await raw.listModels({}, callOptions(options, call))).models),
  };
}
