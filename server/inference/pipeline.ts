/**
 * The one request path: admit (gateway capacity), validate, route and relay, account. Every protocol
 * adapter calls `run` and renders the events it yields; every error it throws is a client-safe
 * ConnectError (gateway-error.ts). Accounting (metrics, the request log line) happens here, once, however
 * the request ends: normally, with an error, or because the client stopped reading.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { ErrorReason } from "../../gen/es/kinfer/inference/v1/inference_pb.js";
import type { GatewayConfig } from "../config/gateway-config.js";
import { gatewayError, toClientError } from "../errors/gateway-error.js";
import type { Logger } from "../log/logger.js";
import type { GatewayMetrics } from "../metrics/gateway-metrics.js";
import { type RelayDeps, type RelayTrace, relay } from "../relay/relay.js";
import type { RoutingTable } from "../routing/routing-table.js";
import type { InferenceEvent, InferenceRequest } from "./inference-request.js";
import { validateRequest } from "./validate-request.js";

export interface PipelineDeps {
  readonly config: () => GatewayConfig;
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
    inFlight++;
    deps.metrics.requestStarted(modelName);
    const leave = deps.relay.retryBudget.enter();
    try {
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
      for await (const event of relay(req, model, deps.relay, acceptedAt, trace)) {
        if (event.type === "delta") {
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
      const totalMs = deps.now() - acceptedAt;
      deps.metrics.requestEnded(modelName, trace.version, req.protocol, code, totalMs / 1000);
      deps.log.info(
        {
          requestId: req.requestId,
          protocol: req.protocol,
          model: modelName,
          version: trace.version,
          replica: trace.replica,
          attempts: trace.attempts,
          code: code === undefined ? "ok" : Code[code],
          ttftMs: firstTokenAt === undefined ? undefined : Math.round(firstTokenAt - acceptedAt),
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
    get inFlight() {
      return inFlight;
    },
  };
}
