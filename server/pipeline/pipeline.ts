/**
 * The one request path: authenticate (API key, when keys are configured), admit (gateway capacity),
 * validate, admit under the key's limits, route and relay, account. Every protocol
 * adapter calls `run` and renders the events it yields; every error it throws is a client-safe
 * ConnectError (gateway-error.ts).
 *
 * Every request ends exactly once, whatever the client does: accounting (in-flight counts, the tenant's
 * streams and token reservation, metrics, the request log line) happens in one `finally`, however the
 * request ends: normally, with an error, cancelled by the client (the adapter returns the generator), or
 * cut because the client stopped reading (timeouts.slowReaderMs: the upstream request is aborted, the
 * replica is not blamed, and the adapter closes the client's stream). Only validated model names become
 * metric labels; anything else is counted as "unknown", so unauthenticated callers cannot choose labels.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import type { Logger } from "../../common/log/logger.js";
import { ErrorReason } from "../../gen/es/kinfer/inference/v1/inference_pb.js";
import type { GatewayConfig } from "../config/gateway-config.js";
import { embeddingsTooLarge, gatewayError, toClientError } from "../errors/gateway-error.js";
import type { FlowController, FlowTicket } from "../flow/flow-control.js";
import type { GatewayMetrics } from "../metrics/gateway-metrics.js";
import { embeddingAnswerTooLarge, type RelayDeps, type RelayTrace, relay } from "../relay/relay.js";
import type { InferenceEvent, InferenceRequest, Priority } from "../request/inference-request.js";
import { validateRequest } from "../request/validate-request.js";
import type { RoutingTable } from "../routing/routing-table.js";
import type { Admission, Admitter } from "../tenants/admission.js";
import { mayUse } from "../tenants/key-store.js";
import type { RequestTracer } from "../tracing/request-tracing.js";

/** Longest model name a log line repeats from a request that named no configured model. */
const MAX_LOGGED_MODEL = 256;

/**
 * Watches one request's consumer: `yielded` when an event is handed over, `resumed` when the consumer
 * pulls the next one. If it holds an event for `limitMs` (a client that stopped reading, its socket
 * buffers full), `onStall` fires once. One lazily re-armed timer per request, not one per token.
 */
function createSlowReaderWatch(limitMs: number, now: () => number, onStall: () => void) {
  let heldSince: number | undefined;
  let timer: NodeJS.Timeout | undefined;
  let fired = false;
  const check = () => {
    timer = undefined;
    if (fired || heldSince === undefined) return;
    const held = now() - heldSince;
    if (held >= limitMs) {
      fired = true;
      onStall();
    } else timer = setTimeout(check, limitMs - held);
  };
  return {
    /** `at`: now, when the caller just read the clock (one read per token instead of two). */
    yielded(at = now()) {
      heldSince = at;
      if (timer === undefined && !fired) timer = setTimeout(check, limitMs);
    },
    resumed() {
      heldSince = undefined;
    },
    stop() {
      clearTimeout(timer);
      fired = true;
    },
  };
}

/** Milliseconds to the microsecond. */
const micro = (ms: number) => Math.round(ms * 1000) / 1000;

/** Characters of a request's prompt or messages. */
const promptChars = (req: InferenceRequest) =>
  req.prompt?.length ??
  req.embed?.inputs.reduce((n, t) => n + t.length, 0) ??
  (req.messages ?? []).reduce((n, m) => n + m.content.length, 0);

export interface PipelineDeps {
  readonly config: () => GatewayConfig;
  /** Every request's outcome per model version (the built-in rollout judges canaries on it). */
  readonly onRequestEnd?: (
    model: string,
    version: string,
    code: Code | undefined,
    ttftMs: number | undefined,
  ) => void;
  /** API keys and tenant limits; undefined when no keys are configured (requests need none). */
  readonly admitter?: Admitter | undefined;
  readonly table: RoutingTable;
  readonly relay: RelayDeps;
  /** Flow control: the per-model admission queue (server/flow/flow-control.ts). */
  readonly flow: FlowController;
  readonly metrics: GatewayMetrics;
  readonly log: Logger;
  readonly now: () => number;
  /** OpenTelemetry spans (server/tracing/request-tracing.ts); none when undefined. */
  readonly tracer?: RequestTracer;
}

export interface Pipeline {
  /** Runs a request; yields start, deltas and finish, or throws a ConnectError. */
  run(req: InferenceRequest): AsyncGenerator<InferenceEvent>;
  /** Requests being served now. */
  readonly inFlight: number;
  /** Requests accepted and requests ended since start: equal whenever nothing is in flight. */
  readonly counts: { readonly accepted: number; readonly ended: number };
  /** Ends every request in flight with `reason` (a client-safe error), as a drain's deadline does. */
  abortAll(reason: ConnectError): void;
  /**
   * Which models, and which of their LoRA adapters, a caller may list: all without API keys; with keys,
   * those its key may use (key-store.ts mayUse; throws UNAUTHENTICATED for a missing or invalid key).
   */
  modelFilter(credential: string): (model: string, adapter?: string) => boolean;
}

/** The client-facing error for an aborted request: the abort reason if it is one of ours. */
function abortError(reason: unknown): ConnectError {
  return reason instanceof ConnectError
    ? reason
    : new ConnectError("the request was cancelled", Code.Canceled);
}

/** Label of the request metrics for a request whose model was not validated (unknown, or never read). */
export const UNKNOWN_MODEL = "unknown";

export function createPipeline(deps: PipelineDeps): Pipeline {
  let inFlight = 0;
  let accepted = 0;
  let ended = 0;
  /** The watchdog of every request in flight, so that a drain can end them all. */
  const watchdogs = new Set<AbortController>();

  async function* run(req: InferenceRequest): AsyncGenerator<InferenceEvent> {
    const acceptedAt = deps.now();
    const config = deps.config();
    const trace: RelayTrace = { version: "", replica: "", attempts: 0 };
    let code: Code | undefined = Code.Canceled; // until proven otherwise: a consumer that stops early cancelled
    /** The model's name once validated: only configured names become metric labels. */
    let model: string | undefined;
    let firstTokenAt: number | undefined;
    let lastTokenAt = 0;
    let observeInterToken: ((seconds: number) => void) | undefined;
    let completionTokens = 0;
    let promptTokens = 0;
    let streamedTokens = 0;
    let admission: Admission | undefined;
    let promptEstimate = 0;
    let ticket: FlowTicket | undefined;
    let queueWaitMs: number | undefined;
    const span = deps.tracer?.start(req, acceptedAt);
    // The request's own signal: the client's, or the slow-reader watchdog's (which also cuts the client).
    const watchdog = new AbortController();
    watchdogs.add(watchdog);
    const signal = AbortSignal.any([req.signal, watchdog.signal]);
    const slowReader = createSlowReaderWatch(config.timeouts.slowReaderMs, deps.now, () => {
      watchdog.abort(new ConnectError("the client stopped reading", Code.Canceled));
      req.onSlowReader?.();
    });
    inFlight++;
    accepted++;
    const leave = deps.relay.retryBudget.enter();

    /** Accounting, exactly once: from the finally below, or from an abort while the consumer holds an event. */
    let finished = false;
    const finish = () => {
      if (finished) return;
      finished = true;
      watchdogs.delete(watchdog);
      slowReader.stop();
      signal.removeEventListener("abort", onAbortWhileHeld);
      inFlight--;
      ended++;
      leave();
      ticket?.release();
      // Charge what the request used, as the replica counted it: its final usage; for a stream cut short
      // after its first token (cancelled, or failed), the usage the replica reported with the last chunk
      // read (vLLM's continuous usage stats), also counted in the token metrics. A replica that reports
      // none is charged the prompt (estimated) and the tokens relayed. Nothing if no token was generated.
      const cut = code !== undefined && streamedTokens > 0 ? trace.usage : undefined;
      if (cut !== undefined && model !== undefined)
        deps.metrics.tokens(model, trace.version, cut.promptTokens, cut.completionTokens, cut.cachedTokens);
      admission?.end(
        code === undefined
          ? promptTokens + completionTokens
          : streamedTokens > 0
            ? cut !== undefined
              ? cut.promptTokens + cut.completionTokens
              : promptEstimate + streamedTokens
            : 0,
      );
      const endedAt = deps.now();
      const totalMs = endedAt - acceptedAt;
      span?.end({
        ...(model !== undefined ? { model } : {}),
        version: trace.version,
        replica: trace.replica,
        attempts: trace.attempts,
        ...(queueWaitMs !== undefined ? { queueWaitMs } : {}),
        ...(firstTokenAt !== undefined ? { ttftMs: firstTokenAt - acceptedAt } : {}),
        promptTokens: code === undefined ? promptTokens : (cut?.promptTokens ?? 0),
        completionTokens: code === undefined ? completionTokens : (cut?.completionTokens ?? streamedTokens),
        code,
        endedAt,
      });
      deps.metrics.requestEnded(
        model ?? UNKNOWN_MODEL,
        trace.version,
        req.protocol,
        code,
        totalMs / 1000,
        model !== undefined,
      );
      if (trace.version !== "" && model !== undefined)
        deps.onRequestEnd?.(
          model,
          trace.version,
          code,
          firstTokenAt === undefined ? undefined : firstTokenAt - acceptedAt,
        );
      deps.log.info(
        {
          requestId: req.requestId,
          protocol: req.protocol,
          // What the client asked for, cut to a length a log line can carry.
          model: model ?? req.model.slice(0, MAX_LOGGED_MODEL),
          version: trace.version,
          replica: trace.replica,
          attempts: trace.attempts,
          code: code === undefined ? "ok" : Code[code],
          // When the request was accepted (wall clock, ms since the epoch, to the µs) and its time to first
          // token (to the µs), so that a request can be followed across processes (bench/gateway-overhead.ts does).
          startedAt: micro(performance.timeOrigin + acceptedAt),
          ttftMs: firstTokenAt === undefined ? undefined : micro(firstTokenAt - acceptedAt),
          totalMs: Math.round(totalMs),
          promptTokens,
          completionTokens,
        },
        "request",
      );
    };
    /**
     * While the consumer holds an event this generator cannot run, and a consumer stuck on a write to a
     * dead connection may never pull again. An abort then ends the request from here: the relay is
     * returned (its replica slot and upstream request released) and the request accounted.
     */
    let relayed: AsyncGenerator<InferenceEvent> | undefined;
    let held = false;
    /** signal.aborted, kept here: it is read for every relayed token and AbortSignal.any's getter is not free. */
    let aborted = false;
    const onAbortWhileHeld = () => {
      aborted = true;
      if (!held) return; // running code sees the abort itself
      relayed?.return(undefined).catch(() => {});
      finish();
    };
    signal.addEventListener("abort", onAbortWhileHeld);

    try {
      // Who is calling comes first: a caller without a valid key learns nothing else.
      const key = deps.admitter?.authenticate(req.credential);
      if (inFlight > config.limits.maxInFlight) {
        throw gatewayError(
          Code.ResourceExhausted,
          ErrorReason.OVERLOADED,
          "the gateway is at capacity",
          1000,
        );
      }
      const entry = validateRequest(req, deps.table, config);
      model = entry.name;
      deps.metrics.requestStarted(model);
      if (embeddingAnswerTooLarge(req, entry.name, deps.relay)) throw embeddingsTooLarge();
      const chars = promptChars(req);
      promptEstimate = Math.ceil(chars / 4);
      // An embedding request generates nothing: its cost is its inputs.
      const cost =
        promptEstimate +
        (req.embed !== undefined ? 0 : (req.sampling.maxTokens ?? config.limits.defaultMaxTokens));
      if (key !== undefined)
        admission = deps.admitter?.admit(
          key,
          entry.name,
          cost,
          req.model !== entry.name ? req.model : undefined,
        );
      // Wait for a slot while the model is saturated (at once when it is not). A key's criticality is
      // both its requests' default and the most they may claim: a tenant cannot jump others' queue.
      const criticality = capPriority(req.priority ?? key?.priority ?? "standard", key?.priority);
      const queuedAt = deps.now();
      const granted = deps.flow.acquire({
        model: entry,
        criticality,
        tenant: key?.tenant ?? "",
        weight: key?.weight ?? 1,
        cost,
        bytes: chars,
        deadlineAt: req.deadlineAt,
        signal,
      });
      ticket = "then" in granted ? await granted : granted;
      queueWaitMs = deps.now() - queuedAt;
      if (finished) return; // ended while it waited (see onAbortWhileHeld)
      // After a wait the model's replicas may have changed (one appeared): route on the table as it is now.
      const current = deps.table.model(entry.name) ?? entry;
      relayed = relay(
        {
          ...req,
          signal,
          priority: criticality,
          ...(span !== undefined ? { span } : {}),
          ...(req.model !== entry.name ? { adapter: req.model } : {}),
        },
        current,
        deps.relay,
        acceptedAt,
        trace,
      );
      for await (const event of relayed) {
        if (event.type === "delta") {
          streamedTokens += event.tokenCount;
          const t = deps.now();
          if (observeInterToken !== undefined) observeInterToken((t - lastTokenAt) / 1000);
          else {
            firstTokenAt = t;
            deps.metrics.firstToken(entry.name, trace.version, (t - acceptedAt) / 1000);
            observeInterToken = deps.metrics.interTokenObserver(entry.name, trace.version);
          }
          lastTokenAt = t;
        } else if (event.type === "finish") {
          promptTokens = event.usage.promptTokens;
          completionTokens = event.usage.completionTokens;
          deps.metrics.tokens(
            entry.name,
            trace.version,
            promptTokens,
            completionTokens,
            event.usage.cachedTokens,
          );
          code = undefined;
        }
        slowReader.yielded(event.type === "delta" ? lastTokenAt : undefined);
        held = true;
        yield event;
        held = false;
        slowReader.resumed();
        if (finished) return; // ended while held (see onAbortWhileHeld)
        // A client gone while this event was written: stop here, not at the next upstream read.
        if (aborted && event.type !== "finish") throw signal.reason;
      }
    } catch (err) {
      const clientError = signal.aborted ? abortError(signal.reason) : toClientError(err);
      code = clientError.code;
      if (clientError.code === Code.Internal)
        deps.log.error({ err, requestId: req.requestId }, "internal error");
      throw clientError;
    } finally {
      finish();
    }
  }

  return {
    run,
    modelFilter(credential) {
      if (deps.admitter === undefined) return () => true;
      const key = deps.admitter.authenticate(credential);
      return (model, adapter) => mayUse(key, model, adapter);
    },
    get inFlight() {
      return inFlight;
    },
    get counts() {
      return { accepted, ended };
    },
    abortAll(reason) {
      for (const w of [...watchdogs]) w.abort(reason);
    },
  };
}

const PRIORITY_RANK: Record<Priority, number> = { critical: 0, standard: 1, sheddable: 2 };
/** The claimed criticality, lowered to the ceiling when there is one. */
function capPriority(claimed: Priority, ceiling: Priority | undefined): Priority {
  return ceiling !== undefined && PRIORITY_RANK[claimed] < PRIORITY_RANK[ceiling] ? ceiling : claimed;
}
