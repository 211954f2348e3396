/**
 * OpenTelemetry tracing shared by the gateway and the simulator: a tracer whose spans are exported over
 * OTLP/HTTP (protobuf, POST <endpoint>/v1/traces) in batches, and W3C trace context (`traceparent`,
 * `tracestate`) read from and written to plain header records.
 *
 * Nothing is registered globally (no global provider, no context manager): every span is started with an
 * explicit parent context, so several tracers live in one process (the tests run gateways and replicas
 * side by side) and the request path pays for no AsyncLocalStorage.
 *
 * Bounds: at most `maxQueueSize` finished spans wait for export (2,048; spans beyond it are dropped, never
 * block a request), sent `maxExportBatchSize` (512) at a time every `batchDelayMs`, each export given
 * `exportTimeoutMs` (10 s); a collector that is down costs the process its queue and nothing else.
 *
 * Pinned to the OpenTelemetry JS 2.x line (sdk-trace 2.12, exporters 0.223): the 3.x line needs Node 22.15.
 */
import {
  type Context,
  ROOT_CONTEXT,
  type Span,
  type SpanOptions,
  type Tracer,
  trace,
} from "@opentelemetry/api";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-proto";
import { resourceFromAttributes } from "@opentelemetry/resources";
import {
  BatchSpanProcessor,
  ParentBasedSampler,
  TraceIdRatioBasedSampler,
  TracerProvider,
} from "@opentelemetry/sdk-trace";

export interface OtlpTracerOptions {
  /** The collector's OTLP/HTTP base URL (e.g. http://otel-collector:4318); spans go to <it>/v1/traces. */
  readonly endpoint: string;
  /** service.name of every span. */
  readonly serviceName: string;
  /** service.instance.id (a pod name). */
  readonly instanceId?: string;
  /** Share of new traces (no sampled parent) recorded, 0 to 1; a client's sampling decision is kept. */
  readonly sampleRatio: number;
  /** How long finished spans wait to be sent together. */
  readonly batchDelayMs: number;
  readonly maxQueueSize?: number;
  readonly exportTimeoutMs?: number;
}

/** Header records as Node gives them (a header may repeat). */
export type HeaderRecord = Record<string, string | string[] | undefined>;

export interface OtlpTracer {
  /** Starts a span under `parent` (ROOT_CONTEXT for a new trace). */
  startSpan(name: string, options: SpanOptions, parent: Context): Span;
  /** Sends every finished span now. */
  flush(): Promise<void>;
  /** Flushes and stops exporting. */
  shutdown(): Promise<void>;
}

const propagator = new W3CTraceContextPropagator();

const getter = {
  keys: (carrier: HeaderRecord) => Object.keys(carrier),
  get: (carrier: HeaderRecord, key: string) => carrier[key.toLowerCase()],
};

/**
 * The trace context a request carries (W3C `traceparent` and `tracestate`), as a parent for its spans;
 * ROOT_CONTEXT when there is none or it is malformed (the propagator checks the format, and ignores a
 * tracestate beyond the spec's 32 members).
 */
export function extractContext(headers: HeaderRecord): Context {
  return propagator.extract(ROOT_CONTEXT, headers, getter);
}

/** The headers (traceparent, and tracestate when there is one) that make `span` the parent downstream. */
export function traceHeaders(span: Span): Record<string, string> {
  return inject(trace.setSpan(ROOT_CONTEXT, span));
}

/**
 * A request's trace context as it should go on unchanged (a proxy that does not trace): checked and
 * re-serialised, so a malformed traceparent is dropped rather than forwarded. Empty when there is none.
 */
export function forwardedTraceHeaders(headers: HeaderRecord): Record<string, string> {
  return inject(extractContext(headers));
}

function inject(ctx: Context): Record<string, string> {
  const out: Record<string, string> = {};
  propagator.inject(ctx, out, {
    set: (carrier, key, value) => {
      carrier[key] = value;
    },
  });
  return out;
}

/** A context whose active span is `span`: the parent of its children. */
export function contextOf(span: Span): Context {
  return trace.setSpan(ROOT_CONTEXT, span);
}

export function startOtlpTracer(options: OtlpTracerOptions): OtlpTracer {
  const exporter = new OTLPTraceExporter({
    url: `${options.endpoint.replace(/\/+$/, "")}/v1/traces`,
    timeoutMillis: options.exportTimeoutMs ?? 10_000,
  });
  const provider = new TracerProvider({
    resource: resourceFromAttributes({
      "service.name": options.serviceName,
      ...(options.instanceId !== undefined ? { "service.instance.id": options.instanceId } : {}),
    }),
    sampler: new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(options.sampleRatio) }),
    spanProcessors: [
      new BatchSpanProcessor({
        exporter,
        maxQueueSize: options.maxQueueSize ?? 2048,
        maxExportBatchSize: 512,
        scheduledDelayMillis: options.batchDelayMs,
        exportTimeoutMillis: options.exportTimeoutMs ?? 10_000,
      }),
    ],
  });
  const tracer: Tracer = provider.getTracer("kinfer");
  return {
    startSpan: (name, spanOptions, parent) => tracer.startSpan(name, spanOptions, parent),
    flush: () => provider.forceFlush(),
    shutdown: () => provider.shutdown(),
  };
}
