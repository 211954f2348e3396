/**
 * kinfer.inference.v1.InferenceService over Connect, gRPC and gRPC-Web (connect-node serves all three):
 * turns proto requests into InferenceRequests, runs them through the pipeline and renders its events as
 * GenerateResponse/ChatResponse messages (or, for Embed, one EmbedResponse). Errors come out of the pipeline already client-safe, with an
 * ErrorDetail attached. The response headers (x-request-id) go out with the first event, which the
 * pipeline holds back until the first token.
 */
import { randomUUID } from "node:crypto";
import type * as http from "node:http";
import type * as http2 from "node:http2";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import {
  Code,
  ConnectError,
  type ConnectRouter,
  createContextKey,
  createContextValues,
  type HandlerContext,
} from "@connectrpc/connect";
import { resetClient } from "../../../common/http/reset-client.js";
import {
  type ChatMessage,
  FinishReason,
  type GenerateResponseSchema,
  InferenceService,
  Priority,
  Role,
  type RoutingHints,
  type SamplingParams,
} from "../../../gen/es/kinfer/inference/v1/inference_pb.js";
import type { GatewayConfig } from "../../config/gateway-config.js";
import { invalidRequest } from "../../errors/gateway-error.js";
import type { Pipeline } from "../../pipeline/pipeline.js";
import { isEligible } from "../../replicas/replica.js";
import {
  type ChatRole,
  type InferenceEvent,
  type InferenceRequest,
  type Priority as InternalPriority,
  type SamplingParams as InternalSampling,
  type Protocol,
  serverTiming,
} from "../../request/inference-request.js";
import { priorityHeader } from "../../request/validate-request.js";
import { adaptersOf, type RoutingTable } from "../../routing/routing-table.js";
import { bearerOf } from "../../tenants/admission.js";
import { traceHeadersOf } from "../../tracing/request-tracing.js";

const ROLES: Partial<Record<Role, ChatRole>> = {
  [Role.SYSTEM]: "system",
  [Role.USER]: "user",
  [Role.ASSISTANT]: "assistant",
  [Role.TOOL]: "tool",
};

const PRIORITIES: Record<Priority, InternalPriority | undefined> = {
  [Priority.UNSPECIFIED]: undefined,
  [Priority.STANDARD]: "standard",
  [Priority.CRITICAL]: "critical",
  [Priority.SHEDDABLE]: "sheddable",
};

const FINISH: Record<string, FinishReason> = {
  stop: FinishReason.STOP,
  length: FinishReason.LENGTH,
  abort: FinishReason.ABORT,
  tool_calls: FinishReason.TOOL_CALLS,
  unspecified: FinishReason.UNSPECIFIED,
};

/** What connect-node serves: an HTTP/1.1 or HTTP/2 request. */
type NodeServerRequest = http.IncomingMessage | http2.Http2ServerRequest;

/** The Node request under a call, so that a slow reader's stream can be closed (see `cutClient`). */
const NODE_REQUEST = createContextKey<NodeServerRequest | undefined>(undefined, {
  description: "node request",
});

/** connectNodeAdapter's contextValues: keeps each call's Node request in its context. */
export function inferenceContextValues(req: NodeServerRequest) {
  return createContextValues().set(NODE_REQUEST, req);
}

/** Closes the client's side of a call: RST_STREAM on HTTP/2, the connection on HTTP/1.1. */
function cutClient(ctx: HandlerContext): void {
  const req = ctx.values.get(NODE_REQUEST);
  if (req !== undefined) resetClient(req);
}

/** Which wire protocol carried the call, from its content type. */
export function protocolOf(ctx: HandlerContext): Protocol {
  const type = ctx.requestHeader.get("content-type") ?? "";
  if (type.startsWith("application/grpc-web")) return "grpc-web";
  if (type.startsWith("application/grpc")) return "grpc";
  return "connect";
}

function sampling(s: SamplingParams | undefined): InternalSampling {
  if (s === undefined) return { stop: [] };
  if (
    s.seed !== undefined &&
    (s.seed > BigInt(Number.MAX_SAFE_INTEGER) || s.seed < -BigInt(Number.MAX_SAFE_INTEGER))
  ) {
    throw invalidRequest("seed must be within ±2^53");
  }
  return {
    stop: s.stop,
    ...(s.maxTokens !== undefined ? { maxTokens: s.maxTokens } : {}),
    ...(s.temperature !== undefined ? { temperature: s.temperature } : {}),
    ...(s.topP !== undefined ? { topP: s.topP } : {}),
    ...(s.topK !== undefined ? { topK: s.topK } : {}),
    ...(s.seed !== undefined ? { seed: Number(s.seed) } : {}),
    ...(s.presencePenalty !== undefined ? { presencePenalty: s.presencePenalty } : {}),
    ...(s.frequencyPenalty !== undefined ? { frequencyPenalty: s.frequencyPenalty } : {}),
  };
}

function messages(list: readonly ChatMessage[], field = "messages") {
  return list.map((m, i) => {
    const role = ROLES[m.role];
    if (role === undefined) throw invalidRequest(`${field}[${i}].role must be set`);
    return { role, content: m.content, ...(m.name !== "" ? { name: m.name } : {}) };
  });
}

export function registerInferenceService(
  router: ConnectRouter,
  pipeline: Pipeline,
  table: RoutingTable,
  config: () => GatewayConfig,
  now: () => number,
): void {
  /**
   * The request's deadline: the client's (grpc-timeout, connect-timeout-ms; at most limits.maxTimeoutMs,
   * which connect-node enforces), else limits.maxTimeoutMs, so that no call runs unbounded and a drain
   * of that length covers every stream. `clear` stops the timer when the request ends first.
   */
  function deadlineOf(ctx: HandlerContext, maxTimeoutMs: number) {
    const timeoutMs = ctx.timeoutMs();
    if (timeoutMs !== undefined && Number.isFinite(timeoutMs))
      return { deadlineAt: now() + timeoutMs, signal: ctx.signal, clear() {} };
    const control = new AbortController();
    const timer = setTimeout(
      () =>
        control.abort(
          new ConnectError(`the request took longer than ${maxTimeoutMs} ms`, Code.DeadlineExceeded),
        ),
      maxTimeoutMs,
    );
    const onAbort = () => control.abort(ctx.signal.reason);
    ctx.signal.addEventListener("abort", onAbort, { once: true });
    return {
      deadlineAt: now() + maxTimeoutMs,
      signal: control.signal,
      clear() {
        clearTimeout(timer);
        ctx.signal.removeEventListener("abort", onAbort);
      },
    };
  }

  /** The fields every request shares; RoutingHints win over the session and version headers. */
  function common(
    model: string,
    routing: RoutingHints | undefined,
    ctx: HandlerContext,
    bounded: { deadlineAt: number; signal: AbortSignal },
  ) {
    const requestId = randomUUID();
    ctx.responseHeader.set("x-request-id", requestId);
    const c = config();
    return {
      requestId,
      protocol: protocolOf(ctx),
      model,
      affinityKey: routing?.affinityKey || (ctx.requestHeader.get(c.sessionHeader) ?? ""),
      version: routing?.version || (ctx.requestHeader.get(c.versionHeader) ?? ""),
      priority:
        PRIORITIES[routing?.priority ?? Priority.UNSPECIFIED] ??
        priorityHeader(ctx.requestHeader.get(c.priorityHeader)),
      deadlineAt: bounded.deadlineAt,
      passthrough: {},
      signal: bounded.signal,
      credential: bearerOf(ctx.requestHeader.get("authorization")),
      traceHeaders: traceHeadersOf((name) => ctx.requestHeader.get(name) ?? ""),
      onSlowReader: () => cutClient(ctx),
    };
  }

  /** The response stream of a request; its headers (sent with the first message) carry Server-Timing. */
  async function* events(request: InferenceRequest, ctx: HandlerContext) {
    for await (const e of pipeline.run(request)) {
      if (e.type === "start") ctx.responseHeader.set("server-timing", serverTiming(e.timing));
      if (e.type !== "embeddings") yield { event: eventOf(e) };
    }
  }

  /** The proto event of an internal event (GenerateResponse and ChatResponse share the same oneof). */
  function eventOf(
    e: Exclude<InferenceEvent, { type: "embeddings" }>,
  ): NonNullable<MessageInitShape<typeof GenerateResponseSchema>["event"]> {
    switch (e.type) {
      case "start":
        return { case: "start", value: { requestId: e.requestId, model: e.model, version: e.version } };
      case "delta":
        return { case: "delta", value: { text: e.text, tokenCount: e.tokenCount } };
      case "finish":
        return {
          case: "finish",
          value: {
            finishReason: FINISH[e.finishReason] ?? FinishReason.UNSPECIFIED,
            matchedStop: e.matchedStop,
            usage: {
              promptTokens: e.usage.promptTokens,
              completionTokens: e.usage.completionTokens,
              cachedTokens: e.usage.cachedTokens,
            },
            timeToFirstToken: durationFromMs(Math.round(e.timeToFirstTokenMs)),
            totalTime: durationFromMs(Math.round(e.totalMs)),
          },
        };
    }
  }

  router.service(InferenceService, {
    async *generate(req, ctx) {
      const deadline = deadlineOf(ctx, config().limits.maxTimeoutMs);
      try {
        const request: InferenceRequest = {
          ...common(req.model, req.routing, ctx, deadline),
          prompt: req.prompt,
          sampling: sampling(req.sampling),
        };
        yield* events(request, ctx);
      } finally {
        deadline.clear();
      }
    },
    async *chat(req, ctx) {
      const deadline = deadlineOf(ctx, config().limits.maxTimeoutMs);
      try {
        const request: InferenceRequest = {
          ...common(req.model, req.routing, ctx, deadline),
          messages: messages(req.messages),
          sampling: sampling(req.sampling),
        };
        yield* events(request, ctx);
      } finally {
        deadline.clear();
      }
    },
    async *respond(req, ctx) {
      const deadline = deadlineOf(ctx, config().limits.maxTimeoutMs);
      try {
        if (req.input.length === 0) throw invalidRequest("input must not be empty");
        const turns = messages(req.input, "input");
        const request: InferenceRequest = {
          ...common(req.model, req.routing, ctx, deadline),
          messages:
            req.instructions !== "" ? [{ role: "system", content: req.instructions }, ...turns] : turns,
          sampling: sampling(req.sampling),
        };
        yield* events(request, ctx);
      } finally {
        deadline.clear();
      }
    },
    async embed(req, ctx) {
      const deadline = deadlineOf(ctx, config().limits.maxTimeoutMs);
      try {
        const request: InferenceRequest = {
          ...common(req.model, req.routing, ctx, deadline),
          embed: {
            inputs: req.inputs,
            ...(req.dimensions > 0 ? { dimensions: req.dimensions } : {}),
            maxAnswerBytes: maxVectorBytes(
              config().limits.maxResponseBytes,
              req.inputs.length,
              ctx.requestHeader.get("content-type") ?? "",
            ),
          },
          sampling: { stop: [] },
        };
        let start: Extract<InferenceEvent, { type: "start" }> | undefined;
        const vectors: Float32Array[] = [];
        for await (const e of pipeline.run(request)) {
          if (e.type === "start") {
            start = e;
            ctx.responseHeader.set("server-timing", serverTiming(e.timing));
          } else if (e.type === "embeddings") vectors.push(...e.vectors);
          else if (e.type === "finish")
            return {
              embeddings: vectors.map((v) => ({ values: Array.from(v) })),
              usage: { promptTokens: e.usage.promptTokens },
              requestId: start?.requestId ?? request.requestId,
              model: start?.model ?? request.model,
              version: start?.version ?? "",
            };
        }
        throw new ConnectError("the request ended without an answer", Code.Internal);
      } finally {
        deadline.clear();
      }
    },
    listModels(_req, ctx) {
      const t = now();
      const visible = pipeline.modelFilter(bearerOf(ctx.requestHeader.get("authorization")));
      return {
        models: table
          .models()
          // A model is listed when its key may use it or one of its adapters, with those adapters only.
          .map((m) => ({ m, adapters: adaptersOf(m).filter((a) => visible(m.name, a)) }))
          .filter(({ m, adapters }) => visible(m.name) || adapters.length > 0)
          .map(({ m, adapters }) => ({
            name: m.name,
            versions: m.versions.map((v) => v.name),
            maxContextTokens: m.maxContextTokens,
            available: m.versions.some((v) => v.weight > 0 && v.replicas.some((r) => isEligible(r, t))),
            adapters,
          })),
      };
    },
  });
}

/**
 * The most float32 bytes of vectors an EmbedResponse can carry within `maxResponseBytes` (connect-node's
 * writeMaxBytes): binary protobuf spends 4 bytes a float and at most 16 a vector, plus the other fields;
 * JSON (a Connect client's application/json) up to 24 characters a float.
 */
function maxVectorBytes(maxResponseBytes: number, inputs: number, contentType: string): number {
  const room = Math.max(0, maxResponseBytes - inputs * 16 - 4096);
  return contentType.includes("json") ? Math.floor(room / 6) : room;
}
