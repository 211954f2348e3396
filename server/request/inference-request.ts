/**
 * The one internal request and event types. Every protocol adapter (Connect/gRPC/gRPC-Web from the
 * proto, the OpenAI REST surface) turns its input into an InferenceRequest and renders InferenceEvents
 * back; validation, routing, relaying and accounting see nothing else.
 */

import type { RequestSpan } from "../tracing/request-tracing.js";

/** Which adapter a request came through (a label of the request metrics). */
export type Protocol = "grpc" | "grpc-web" | "connect" | "openai";

export type ChatRole = "system" | "user" | "assistant" | "tool" | "developer";

export interface ChatTurn {
  readonly role: ChatRole;
  readonly content: string;
  readonly name?: string;
}

export interface SamplingParams {
  readonly maxTokens?: number;
  readonly temperature?: number;
  readonly topP?: number;
  readonly topK?: number;
  readonly stop: readonly string[];
  readonly seed?: number;
  readonly presencePenalty?: number;
  readonly frequencyPenalty?: number;
}

export type Priority = "critical" | "standard" | "sheddable";

export interface InferenceRequest {
  readonly requestId: string;
  readonly protocol: Protocol;
  readonly model: string;
  /** A completion has a prompt; a chat has messages; an embedding request has `embed`. */
  readonly prompt?: string;
  readonly messages?: readonly ChatTurn[];
  readonly embed?: EmbedInput;
  readonly sampling: SamplingParams;
  /** Session key for affinity; "" for none. */
  readonly affinityKey: string;
  /**
   * Criticality for flow control and the replica's scheduling priority; undefined when the client named
   * none (the pipeline then takes the API key's default, else "standard").
   */
  readonly priority?: Priority | undefined;
  /** When the client's deadline passes (monotonic ms), if it has one: a waiting request leaves before it. */
  readonly deadlineAt?: number | undefined;
  /** A pinned version; "" follows the traffic split. */
  readonly version: string;
  /**
   * OpenAI request fields the gateway does not interpret, forwarded to vLLM unchanged (logprobs,
   * response_format, ...). Empty for the gRPC surface.
   */
  readonly passthrough: Readonly<Record<string, unknown>>;
  /** Aborted when the client goes away or its deadline passes (the reason says which). */
  readonly signal: AbortSignal;
  /** The client's W3C trace context headers (traceparent, tracestate), as received; unchecked. */
  readonly traceHeaders?: { readonly traceparent?: string; readonly tracestate?: string } | undefined;
  /** The LoRA adapter named as the model (set by the pipeline once the model is resolved). */
  readonly adapter?: string;
  /** The request's span (set by the pipeline; server/tracing/request-tracing.ts). */
  readonly span?: RequestSpan;
  /** The API key presented (`authorization: Bearer <key>`); "" for none. */
  readonly credential: string;
  /**
   * Called once if the client reads nothing for timeouts.slowReaderMs while an event waits for it: the
   * adapter closes the client's stream (the request is then cancelled; the replica is not blamed).
   */
  readonly onSlowReader?: () => void;
}

/** What an embedding request embeds (vLLM's /v1/embeddings). */
export interface EmbedInput {
  /** The texts, in order (1 to MAX_EMBED_INPUTS, none empty). */
  readonly inputs: readonly string[];
  /** Vectors shortened to this many dimensions; undefined for the model's size. */
  readonly dimensions?: number;
  /**
   * The most vector bytes (inputs x dimensions x 4, as float32) the client's surface carries, when it is
   * less than limits.maxEmbeddingBytes (gRPC and Connect: limits.maxResponseBytes).
   */
  readonly maxAnswerBytes?: number;
}

/** Most inputs in one embedding request (OpenAI's limit). */
export const MAX_EMBED_INPUTS = 2048;

export interface Usage {
  readonly promptTokens: number;
  readonly completionTokens: number;
  readonly cachedTokens: number;
}

export interface FirstTokenTiming {
  /** From sending the request to the replica to reading its first token, in ms (the last attempt's). */
  readonly upstreamMs: number;
  /** The rest of the time since the request was accepted: routing, failed attempts, the gateway's work. */
  readonly gatewayMs: number;
}

/**
 * The timing as a Server-Timing header value (W3C), which gateways and proxies use to tell their own
 * time from their upstream's (as Envoy's x-envoy-upstream-service-time): what a client measures minus
 * `upstream` is what the gateway and the network to it added.
 */
export function serverTiming(t: FirstTokenTiming): string {
  return `gateway;dur=${t.gatewayMs.toFixed(3)}, upstream;dur=${t.upstreamMs.toFixed(3)};desc="replica to first token"`;
}

export type FinishReason = "stop" | "length" | "abort" | "tool_calls" | "unspecified";

/**
 * What a replica's chunk carried besides text, as it sent it: its delta's other fields (tool_calls,
 * reasoning_content, ...) and its logprobs. The OpenAI surface relays them; the proto has no fields for
 * them (Connect and gRPC clients get the text).
 */
export interface DeltaExtras {
  readonly delta?: Readonly<Record<string, unknown>>;
  readonly logprobs?: unknown;
}

export type InferenceEvent =
  | {
      readonly type: "start";
      readonly requestId: string;
      readonly model: string;
      readonly version: string;
      /** Time to the first token, split: the replica's (request sent to first token read) and the gateway's. */
      readonly timing: FirstTokenTiming;
    }
  | {
      readonly type: "delta";
      readonly text: string;
      readonly tokenCount: number;
      readonly extras?: DeltaExtras;
    }
  | {
      /**
       * Part of an embedding request's answer: the next vectors, one per input in order; the events
       * between start and finish hold them all.
       */
      readonly type: "embeddings";
      readonly vectors: readonly Float32Array[];
    }
  | {
      readonly type: "finish";
      readonly finishReason: FinishReason;
      readonly matchedStop: string;
      readonly usage: Usage;
      readonly timeToFirstTokenMs: number;
      readonly totalMs: number;
    };

/** The text routing hashes for prefix affinity: the prompt, or the conversation rendered plainly. */
export function prefixTextOf(req: InferenceRequest): string {
  if (req.prompt !== undefined) return req.prompt;
  if (req.embed !== undefined) return req.embed.inputs.join("\n");
  return (req.messages ?? []).map((m) => `<${m.role}>${m.content}\n`).join("");
}
