/**
 * The one request path: authenticate (API key, when keys are configured), admit (gateway capacity),
 * validate, admit under the key's limits, route and relay, account. Every protocol
 * adapter calls `run` and renders the events it yields; every error it throws is a client-safe
 * ConnectError (gateway-error.ts). Accounting (metrics, the request log line) happens here, once, however
 * the request ends: normally, with an error, or because the client stopped reading.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import type { Logger } from "../../common/log/logger.js";
import { ErrorReason } from "../../gen/es/kinfer/inference/v1/inference_pb.js";
import type { GatewayConfig } from "../config/gateway-config.js";
import { gatewayError, toClientError } from "../errors/gateway-error.js";
import type { GatewayMetrics } from "../metrics/gateway-metrics.js";
import { type RelayDeps, type RelayTrace, relay } from "../relay/relay.js";
import type { InferenceEvent, InferenceRequest } from "../request/inference-request.js";
import { validateRequest } from "../request/validate-request.js";
import type { RoutingTable } from "../routing/routing-table.js";
import type { Admission, Admitter } from "../tenants/admission.js";

/** Milliseconds to the microsecond. */
const micro = (ms: number) => Math.round(ms * 1000) / 1000;

/** Characters of a request's prompt or messages. */
const promptChars = (req: InferenceRequest) =>
  req.prompt?.length ?? (req.messages ?? []).reduce((n, m) => n + m.content.length, 0);

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
  readonly metrics: GatewayMetrics;
  readonly log: Logger;
  readonly now: () => number;
}

export interface Pipeline {
  /** Runs a request; yields start, deltas and finish, or throws a ConnectError. */
  run(req: InferenceRequest): AsyncGenerator<InferenceEvent>;
  /** Requests being served now. */
  readonly inFlight: number;
  /**
   * Which models a caller may list: every model without API keys; with keys, those of its key (throws
   * UNAUTHENTICATED for a missing or invalid key).
   */
  modelFilter(credential: string): (model: string) => boolean;
}

/** The client-facing error for an aborted request: the abort reason if it is one of ours. */
function abortError(reason: unknown): ConnectError {
  return reason instanceof ConnectError
    ? reason
    : new ConnectError("the request was cancelled", Code.Canceled);
}

export function createPipeline(deps: PipelineDeps): Pipeline {
  let inFlight = 0;

  async function* run(req: InferenceRequest): AsyncGenerator<InferenceEvent> {
    const acceptedAt = deps.now();
    const config = deps.config();
    const trace: RelayTrace = { version: "", replica: "", attempts: 0 };
    let code: Code | undefined = Code.Canceled; // until proven otherwise: a consumer that stops early cancelled
    let modelName = req.model;
    let firstTokenAt: number | undefined;
    let lastTokenAt = 0;
    let observeInterToken: ((seconds: number) => void) | undefined;
    let completionTokens = 0;
    let promptTokens = 0;
    let streamedTokens = 0;
    let admission: Admission | undefined;
    let promptEstimate = 0;
    inFlight++;
    deps.metrics.requestStarted(modelName);
    const leave = deps.relay.retryBudget.enter();
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
      const model = validateRequest(req, deps.table, config);
      modelName = model.name;
      if (key !== undefined) {
        promptEstimate = Math.ceil(promptChars(req) / 4);
        const maxTokens = req.sampling.maxTokens ?? config.limits.defaultMaxTokens;
        admission = deps.admitter?.admit(key, model.name, promptEstimate + maxTokens);
      }
      for await (const event of relay(req, model, deps.relay, acceptedAt, trace)) {
        if (event.type === "delta") {
          streamedTokens += event.tokenCount;
          const t = deps.now();
          if (observeInterToken !== undefined) observeInterToken((t - lastTokenAt) / 1000);
          else {
            firstTokenAt = t;
            deps.metrics.firstToken(model.name, trace.version, (t - acceptedAt) / 1000);
            observeInterToken = deps.metrics.interTokenObserver(model.name, trace.version);
          }
          lastTokenAt = t;
        } else if (event.type === "finish") {
          promptTokens = event.usage.promptTokens;
          completionTokens = event.usage.completionTokens;
          deps.metrics.tokens(
            model.name,
            trace.version,
            promptTokens,
            completionTokens,
            event.usage.cachedTokens,
          );
          code = undefined;
        }
        yield event;
      }
    } catch (err) {
      const clientError = req.signal.aborted ? abortError(req.signal.reason) : toClientError(err);
      code = clientError.code;
      if (clientError.code === Code.Internal)
        deps.log.error({ err, requestId: req.requestId }, "internal error");
      throw clientError;
    } finally {
      inFlight--;
      leave();
      // Charge what the request used: its usage, or for a stream cut short, its prompt (estimated) and
      // the tokens it received; nothing if no token was generated.
      admission?.end(
        code === undefined
          ? promptTokens + completionTokens
          : streamedTokens > 0
            ? promptEstimate + streamedTokens
            : 0,
      );
      const totalMs = deps.now() - acceptedAt;
      deps.metrics.requestEnded(modelName, trace.version, req.protocol, code, totalMs / 1000);
      if (trace.version !== "")
        deps.onRequestEnd?.(
          modelName,
          trace.version,
          code,
          firstTokenAt === undefined ? undefined : firstTokenAt - acceptedAt,
        );
      deps.log.info(
        {
          requestId: req.requestId,
          protocol: req.protocol,
          model: modelName,
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
    }
  }

  return {
    run,
    modelFilter(credential) {
      if (deps.admitter === undefined) return () => true;
      const key = deps.admitter.authenticate(credential);
      return (model) => key.allowedModels.length === 0 || key.allowedModels.includes(model);
    },
    get inFlight() {
      return inFlight;
    },
  };
}
