/**
 * The gateway's traces: one SERVER span per request, named for its operation (chat, text_completion,
 * embeddings) and a child of the client's W3C trace context when it sends one; under it one CLIENT span
 * per upstream attempt ("upstream"), whose context goes to the replica as `traceparent` (vLLM parents its
 * own llm_request span under it when it traces). The request span carries the route the request took
 * (OpenTelemetry's gen_ai.* attributes where they exist, kinfer.* for the rest):
 *
 *   gen_ai.operation.name, gen_ai.request.model, gen_ai.usage.input_tokens / output_tokens,
 *   kinfer.request_id, kinfer.protocol, kinfer.version, kinfer.replica, kinfer.attempts,
 *   kinfer.queue_wait_ms (flow control), kinfer.ttft_ms, kinfer.code (the gRPC code of a failure);
 *
 * an attempt span: server.address (the replica), kinfer.attempt, kinfer.failure (how it failed).
 *
 * With tracing off (no tracing.otlpEndpoint), nothing is recorded and a client's trace context is passed
 * to the replica as it came (re-serialised after the format check), so vLLM's spans still join the
 * client's trace.
 */

import { Code } from "@connectrpc/connect";
import { SpanKind, SpanStatusCode } from "@opentelemetry/api";
import {
  contextOf,
  extractContext,
  forwardedTraceHeaders,
  type OtlpTracer,
  startOtlpTracer,
  traceHeaders,
} from "../../common/tracing/otlp-tracer.js";
import type { GatewayConfig } from "../config/gateway-config.js";
import type { InferenceRequest } from "../request/inference-request.js";

/** One upstream attempt's span. */
export interface AttemptSpan {
  /** The headers that carry its context to the replica (empty when there is none). */
  readonly headers: Readonly<Record<string, string>>;
  /** Ends it; `failure` says how the attempt failed (UpstreamFailure, or "cancelled"). */
  end(failure?: string): void;
}

/** What the request span records when the request ends. */
export interface RequestOutcome {
  readonly model?: string;
  readonly version: string;
  readonly replica: string;
  readonly attempts: number;
  readonly queueWaitMs?: number;
  readonly ttftMs?: number;
  readonly promptTokens: number;
  readonly completionTokens: number;
  /** undefined for success. */
  readonly code: Code | undefined;
  /** Monotonic ms (performance.now()) when it ended. */
  readonly endedAt: number;
}

export interface RequestSpan {
  /** Starts the span of upstream attempt `n` to `replicaUrl`. */
  attempt(replicaUrl: string, n: number): AttemptSpan;
  end(outcome: RequestOutcome): void;
}

export interface RequestTracer {
  /** The span of a request accepted at `acceptedAt` (monotonic ms). */
  start(req: InferenceRequest, acceptedAt: number): RequestSpan;
  shutdown(): Promise<void>;
}

/** The client's W3C trace context headers, when it sent them (checked where they are used). */
export function traceHeadersOf(header: (name: string) => string): InferenceRequest["traceHeaders"] {
  const traceparent = header("traceparent");
  if (traceparent === "") return undefined;
  const tracestate = header("tracestate");
  return tracestate === "" ? { traceparent } : { traceparent, tracestate };
}

const NO_HEADERS: Readonly<Record<string, string>> = Object.freeze({});
const NO_ATTEMPT: AttemptSpan = { headers: NO_HEADERS, end() {} };
const NO_SPAN: RequestSpan = { attempt: () => NO_ATTEMPT, end() {} };

/** Wall-clock ms for a monotonic time (OpenTelemetry takes epoch ms). */
const wall = (monotonicMs: number) => performance.timeOrigin + monotonicMs;

const operationOf = (req: InferenceRequest) =>
  req.embed !== undefined ? "embeddings" : req.prompt !== undefined ? "text_completion" : "chat";

/** Tracing as configured: OTLP export when an endpoint is set, else trace-context pass-through. */
export function createRequestTracer(config: GatewayConfig["tracing"], instanceId?: string): RequestTracer {
  if (config.otlpEndpoint === undefined) return passThroughTracer();
  const tracer = startOtlpTracer({
    endpoint: config.otlpEndpoint,
    serviceName: config.serviceName,
    ...(instanceId !== undefined ? { instanceId } : {}),
    sampleRatio: config.sampleRatio,
    batchDelayMs: config.batchDelayMs,
    maxQueueSize: config.maxQueueSize,
  });
  return otlpRequestTracer(tracer);
}

function passThroughTracer(): RequestTracer {
  return {
    start(req) {
      if (req.traceHeaders?.traceparent === undefined) return NO_SPAN;
      const attempt: AttemptSpan = { headers: forwardedTraceHeaders(req.traceHeaders), end() {} };
      return { attempt: () => attempt, end() {} };
    },
    shutdown: async () => {},
  };
}

function otlpRequestTracer(tracer: OtlpTracer): RequestTracer {
  return {
    start(req, acceptedAt) {
      const parent = extractContext(req.traceHeaders ?? {});
      const span = tracer.startSpan(
        operationOf(req),
        {
          kind: SpanKind.SERVER,
          startTime: wall(acceptedAt),
          attributes: {
            "gen_ai.operation.name": operationOf(req),
            "kinfer.request_id": req.requestId,
            "kinfer.protocol": req.protocol,
          },
        },
        parent,
      );
      if (!span.isRecording()) {
        // Sampled out: nothing recorded here, but the decision (flags 00) goes on to the replica, so
        // that it does not start a trace of its own.
        const attempt: AttemptSpan = { headers: traceHeaders(span), end() {} };
        return { attempt: () => attempt, end() {} };
      }
      const asParent = contextOf(span);
      return {
        attempt(replicaUrl, n) {
          const child = tracer.startSpan(
            "upstream",
            {
              kind: SpanKind.CLIENT,
              attributes: { "server.address": replicaUrl, "kinfer.attempt": n },
            },
            asParent,
          );
          return {
            headers: traceHeaders(child),
            end(failure) {
              if (failure !== undefined) {
                child.setAttribute("kinfer.failure", failure);
                child.setStatus({ code: SpanStatusCode.ERROR, message: failure });
              }
              child.end();
            },
          };
        },
        end(o) {
          if (o.model !== undefined) span.setAttribute("gen_ai.request.model", o.model);
          span.setAttributes({
            "kinfer.version": o.version,
            "kinfer.replica": o.replica,
            "kinfer.attempts": o.attempts,
            "gen_ai.usage.input_tokens": o.promptTokens,
            "gen_ai.usage.output_tokens": o.completionTokens,
          });
          if (o.queueWaitMs !== undefined) span.setAttribute("kinfer.queue_wait_ms", o.queueWaitMs);
          if (o.ttftMs !== undefined) span.setAttribute("kinfer.ttft_ms", o.ttftMs);
          if (o.code !== undefined) {
            span.setAttribute("kinfer.code", Code[o.code] ?? String(o.code));
            span.setStatus({ code: SpanStatusCode.ERROR, message: Code[o.code] });
          }
          span.end(wall(o.endedAt));
        },
      };
    },
    shutdown: () => tracer.shutdown(),
  };
}
