/**
 * The relay: takes a validated request to a replica and streams its tokens back, as an async generator
 * that the protocol adapter pulls (so memory stays bounded whatever the client's speed).
 *
 * Before the first token, the client sees nothing; a connection failure, reset, 429, 503 (or other 5xx)
 * or a first-token timeout is retried on a DIFFERENT replica of the same version, within maxAttempts, the
 * retry budget and the client's deadline. Once a token has been relayed nothing is retried: a mid-stream
 * failure (reset, vLLM's in-band error event, a stream that ends without finish or [DONE], an inter-token
 * timeout) ends the stream with a typed error after the partial text. When the client cancels or its
 * deadline passes, the upstream request is aborted at once, which makes vLLM free the sequence's KV cache.
 */
import type { Dispatcher } from "undici";
import { effectiveFlow, type GatewayConfig } from "../config/gateway-config.js";
import { noHealthyReplica, type UpstreamFailure, upstreamError } from "../errors/gateway-error.js";
import type { OutlierDetector } from "../replicas/outlier-detection.js";
import type { Replica } from "../replicas/replica.js";
import type { FinishReason, InferenceEvent, InferenceRequest, Usage } from "../request/inference-request.js";
import { prefixTextOf } from "../request/inference-request.js";
import type { PickReason } from "../routing/pick-replica.js";
import type { Router } from "../routing/router.js";
import type { ModelEntry } from "../routing/routing-table.js";
import type { RetryBudget } from "./retry-budget.js";
import {
  AnswerTooLarge,
  embeddingsBody,
  fetchEmbeddings,
  type UpstreamEmbeddings,
} from "./upstream-embeddings.js";
import {
  openUpstream,
  UpstreamError,
  type UpstreamEvent,
  type UpstreamStream,
  upstreamBody,
} from "./upstream-stream.js";

export interface RelayDeps {
  readonly config: GatewayConfig;
  readonly router: Router;
  readonly outliers: OutlierDetector;
  readonly retryBudget: RetryBudget;
  readonly dispatcher: Dispatcher;
  /** Monotonic ms. */
  readonly now: () => number;
  readonly onRouted?: (model: string, version: string, reason: PickReason) => void;
  /** A request is being sent to `replica` (the scraper follows traffic: scraper.ts `touch`). */
  readonly onSend?: (replica: Replica) => void;
  /** `replica` may be down (refused, or a 503 before the first token): read its health now (scraper.ts `suspect`). */
  readonly onSuspect?: (replica: Replica) => void;
  readonly onRetry?: (model: string, failure: UpstreamFailure) => void;
  readonly onEjected?: (replica: Replica) => void;
  /** For logs: a failure's raw detail, never shown to clients. */
  readonly onUpstreamFailure?: (replica: Replica, error: UpstreamError, requestId: string) => void;
  /**
   * Each embedding model's vector size, learned from its answers (one entry per configured model name),
   * so that a request whose answer would pass its bound is refused before any replica works on it.
   */
  readonly embeddingSizes?: Map<string, { readonly size: number; readonly learnedAt: number }>;
}

/** What the relay did, filled in as it goes (for logs and metrics). */
export interface RelayTrace {
  version: string;
  replica: string;
  attempts: number;
  /**
   * The usage the replica reported with the last chunk read (vLLM's continuous usage stats): what a
   * stream cut short (cancelled, or failed after its first token) used, exactly as the replica counted it.
   */
  usage?: Usage;
}

/** Failures that leave the replica's health in doubt (429 and the client's own mistakes do not). */
const COUNTS_AGAINST_REPLICA: ReadonlySet<UpstreamFailure> = new Set([
  "connect",
  "unavailable",
  "first-token-timeout",
  "inter-token-timeout",
  "broken-stream",
  "protocol",
  // A replica that does not serve its own model is misconfigured (an adapter it lacks is not: see below).
  "not-found",
]);

/** Failures before the first token that another replica may not have. */
const RETRYABLE: ReadonlySet<UpstreamFailure> = new Set([
  "connect",
  "overloaded",
  "unavailable",
  "first-token-timeout",
  "not-found",
]);

/** Vectors per "embeddings" event. */
const EMBEDDINGS_PER_EVENT = 64;

/**
 * Whether an embedding request's answer is known ahead to pass its bound (limits.maxEmbeddingBytes, and
 * the surface's own, req.embed.maxAnswerBytes): its vectors' size is `dimensions` when given, else the
 * model's size as learned from an earlier answer (deps.embeddingSizes). The pipeline asks before
 * admission, so such a request takes no queue slot and no replica's time.
 */
export function embeddingAnswerTooLarge(req: InferenceRequest, model: string, deps: RelayDeps): boolean {
  if (req.embed === undefined) return false;
  const size = req.embed.dimensions ?? learnedSize(model, deps);
  return size !== undefined && req.embed.inputs.length * size * 4 > maxVectorBytesOf(req, deps.config);
}

/**
 * How long a learned size is trusted: the model behind a name may change (a new deployment), and a size
 * learned from a broken answer must not refuse the model's requests for good.
 */
const LEARNED_SIZE_TTL_MS = 10 * 60_000;

function learnedSize(model: string, deps: RelayDeps): number | undefined {
  const learned = deps.embeddingSizes?.get(model);
  return learned !== undefined && deps.now() - learned.learnedAt < LEARNED_SIZE_TTL_MS
    ? learned.size
    : undefined;
}

/** The most float32 bytes an embedding request's answer may hold. */
function maxVectorBytesOf(req: InferenceRequest, config: GatewayConfig): number {
  return Math.min(config.limits.maxEmbeddingBytes, req.embed?.maxAnswerBytes ?? Number.POSITIVE_INFINITY);
}

/**
 * The reason an attempt's own signal aborts when the attempt is over (it closes an upstream request still
 * open). One object for all: abort() without a reason builds a DOMException with a stack each time.
 */
const ATTEMPT_OVER = new Error("the attempt is over");

const FINISH_REASONS: Record<string, FinishReason> = {
  stop: "stop",
  length: "length",
  abort: "abort",
  tool_calls: "tool_calls",
};

export async function* relay(
  req: InferenceRequest,
  model: ModelEntry,
  deps: RelayDeps,
  acceptedAt: number,
  trace: RelayTrace,
): AsyncGenerator<InferenceEvent> {
  const { config, router } = deps;
  const version = router.pickVersion(model, req.version, req.adapter);
  trace.version = version.name;
  const promptText = prefixTextOf(req);
  const input = {
    pinnedVersion: req.version,
    maxInFlight: effectiveFlow(config, model.name).maxInFlightPerReplica,
    affinityKey: req.affinityKey,
    // vLLM keeps each adapter's prefix cache apart: so does prefix affinity.
    prefixHashes: router.hashPrompt(
      req.adapter === undefined ? promptText : `${req.adapter}\u0000${promptText}`,
    ),
    adapter: req.adapter,
  };
  /** The prompt's tokens, estimated (about 4 characters a token), for the replica's pending prefill. */
  const promptTokens = Math.ceil(promptText.length / 4);
  // vLLM runs a request with a LoRA adapter when the adapter's name is its model.
  const servedName = req.adapter ?? version.servedModelName;
  const body =
    req.embed !== undefined
      ? embeddingsBody(req, servedName)
      : upstreamBody(req, servedName, config.limits.defaultMaxTokens);
  const path = req.prompt !== undefined ? "/v1/completions" : "/v1/chat/completions";
  // An embedding request's answer is bounded (float32 bytes of all its vectors): refused before admission
  // when its size is known ahead (the pipeline asks embeddingAnswerTooLarge), else cut while the replica's
  // answer arrives (upstream-embeddings.ts).
  const maxVectorBytes = maxVectorBytesOf(req, config);
  const tried = new Set<string>();
  let lastFailure: UpstreamError | undefined;
  let releaseRetry: (() => void) | undefined;

  try {
    for (let attempt = 1; ; attempt++) {
      if (req.signal.aborted) throw req.signal.reason;
      const pick = router.pickReplica(model, version, input, tried);
      if (pick === undefined) {
        throw lastFailure === undefined
          ? noHealthyReplica(model.name)
          : upstreamError(lastFailure.failure, lastFailure.retryAfterMs);
      }
      const replica = pick.replica;
      tried.add(replica.id);
      // Record affinity now, not at the first token: requests sharing this prefix that arrive while it is
      // being prefilled should follow it to the same replica.
      router.commit(replica, input);
      trace.replica = replica.id;
      trace.attempts = attempt;
      deps.onRouted?.(model.name, version.name, pick.reason);

      const attemptSpan = req.span?.attempt(replica.url, attempt);
      let attemptFailure: string | undefined = "cancelled"; // until the attempt ends otherwise
      const attemptControl = new AbortController();
      const onClientAbort = () => attemptControl.abort(req.signal.reason);
      req.signal.addEventListener("abort", onClientAbort, { once: true });
      replica.inFlight++;
      replica.sentSinceScrape++;
      deps.onSend?.(replica);
      replica.prefillTokens += promptTokens;
      let prefilling = true;
      const prefilled = () => {
        if (prefilling) replica.prefillTokens -= promptTokens;
        prefilling = false;
      };
      let streamed = false;
      try {
        if (req.embed !== undefined) {
          // One answer, retried like a stream's first token until it arrives.
          const { answer, sentAt, answeredAt } = await embedOnce(
            replica,
            body,
            req,
            maxVectorBytes,
            attemptControl,
            deps,
            attemptSpan?.headers,
          );
          if (req.embed.dimensions === undefined && answer.vectors[0] !== undefined)
            deps.embeddingSizes?.set(model.name, { size: answer.vectors[0].length, learnedAt: deps.now() });
          // The attempt succeeded, whatever the consumer does with the events below.
          attemptFailure = undefined;
          prefilled();
          streamed = true;
          deps.outliers.success(replica);
          const timing = { upstreamMs: answeredAt - sentAt, gatewayMs: sentAt - acceptedAt };
          yield {
            type: "start",
            requestId: req.requestId,
            model: req.adapter ?? model.name,
            version: version.name,
            timing,
          };
          // In slices: a client's adapter writes each while the pipeline holds it, so its slow-reader
          // watch bounds the time to read a slice, not the whole answer.
          for (let i = 0; i < answer.vectors.length; i += EMBEDDINGS_PER_EVENT)
            yield { type: "embeddings", vectors: answer.vectors.slice(i, i + EMBEDDINGS_PER_EVENT) };
          yield {
            type: "finish",
            finishReason: "stop",
            matchedStop: "",
            usage: { promptTokens: answer.promptTokens, completionTokens: 0, cachedTokens: 0 },
            timeToFirstTokenMs: answeredAt - acceptedAt,
            totalMs: deps.now() - acceptedAt,
          };
          return;
        }
        const first = await firstTokens(replica, path, body, req, attemptControl, deps, attemptSpan?.headers);
        prefilled();
        streamed = true;
        const timing = {
          upstreamMs: first.firstTokenAt - first.sentAt,
          gatewayMs: first.sentAt - acceptedAt,
        };
        yield {
          type: "start",
          requestId: req.requestId,
          model: req.adapter ?? model.name,
          version: version.name,
          timing,
        };
        // The rest, one event at a time: most are already read (returned as they are), the others awaited.
        const rest = readRest(first, replica, req, attemptControl, deps, acceptedAt, trace);
        try {
          for (;;) {
            const next = rest.next();
            const event = next instanceof Promise ? await next : next;
            if (event === undefined) return;
            // The stream's end: the attempt succeeded, even if the consumer stops at this event.
            if (event.type === "finish") attemptFailure = undefined;
            yield event;
          }
        } finally {
          rest.close();
        }
      } catch (err) {
        if (req.signal.aborted) throw req.signal.reason;
        if (!(err instanceof UpstreamError)) throw err;
        attemptFailure = err.failure;
        // An answer too large still tells the model's vector size: the next such request is refused ahead.
        if (err instanceof AnswerTooLarge && req.embed?.dimensions === undefined && err.vectorSize > 0)
          deps.embeddingSizes?.set(model.name, { size: err.vectorSize, learnedAt: deps.now() });
        deps.onUpstreamFailure?.(replica, err, req.requestId);
        // A refused connection is a health verdict: stop routing here until the scraper finds it up
        // again, instead of letting every request in the meantime find out. A 5xx before the first token
        // may be one (an engine restarted and still loading answers 503): the scraper reads /health now.
        if (!streamed && err.failure === "connect") replica.healthy = false;
        if (!streamed && (err.failure === "connect" || err.failure === "unavailable"))
          deps.onSuspect?.(replica);
        // A replica without the adapter named (restarted since it was loaded, or never had it): it is
        // forgotten there, and the request tried elsewhere; the replica serves its other requests well.
        const adapterMissing = err.failure === "not-found" && req.adapter !== undefined;
        if (adapterMissing)
          replica.adapters = new Set([...replica.adapters].filter((a) => a !== req.adapter));
        if (COUNTS_AGAINST_REPLICA.has(err.failure) && !adapterMissing) {
          if (deps.outliers.failure(replica, version.replicas, deps.now())) deps.onEjected?.(replica);
        }
        if (streamed) throw upstreamError(err.failure);
        lastFailure = err;
        // A request is one retry in progress however many times it retries: its slot is given back before
        // the next is taken (taking first would need two slots, and a budget at its bound would refuse it).
        releaseRetry?.();
        releaseRetry = undefined;
        const retry =
          RETRYABLE.has(err.failure) && attempt < config.retry.maxAttempts
            ? deps.retryBudget.tryAcquire()
            : undefined;
        if (retry === undefined) throw upstreamError(err.failure, err.retryAfterMs);
        releaseRetry = retry;
        deps.onRetry?.(model.name, err.failure);
      } finally {
        attemptSpan?.end(attemptFailure);
        prefilled();
        replica.inFlight--;
        req.signal.removeEventListener("abort", onClientAbort);
        attemptControl.abort(ATTEMPT_OVER); // closes the upstream request if it is still open
      }
    }
  } finally {
    releaseRetry?.();
  }
}

/** An embedding request's answer from one replica, and when it was sent and answered. */
interface EmbedAnswer {
  readonly answer: UpstreamEmbeddings;
  readonly sentAt: number;
  readonly answeredAt: number;
}

/**
 * One embeddings call, bounded by the first-token timeout (the whole answer is its "first token"): a
 * replica that does not answer in time is a retryable failure, as a stream's silence is.
 */
async function embedOnce(
  replica: Replica,
  body: string,
  req: InferenceRequest,
  maxVectorBytes: number,
  control: AbortController,
  deps: RelayDeps,
  traceHeaders?: Readonly<Record<string, string>>,
): Promise<EmbedAnswer> {
  const limit = deps.config.timeouts.firstTokenMs;
  const timer = setTimeout(
    () => control.abort(new UpstreamError("first-token-timeout", `no answer within ${limit} ms`)),
    limit,
  );
  const sentAt = deps.now();
  try {
    const answer = await fetchEmbeddings(
      replica.url,
      body,
      req.embed?.inputs.length ?? 0,
      req.requestId,
      control.signal,
      deps.dispatcher,
      maxVectorBytes,
      traceHeaders,
    );
    return { answer, sentAt, answeredAt: deps.now() };
  } catch (err) {
    // An abort by our own timer surfaces as its reason (an UpstreamError); a client abort as the client's.
    if (control.signal.aborted && control.signal.reason instanceof UpstreamError && !req.signal.aborted) {
      throw control.signal.reason;
    }
    throw err;
  } finally {
    clearTimeout(timer);
  }
}

/** The upstream stream, positioned after its first event(s) that carry text or end it. */
interface FirstTokens {
  readonly upstream: UpstreamStream;
  /** Events read while waiting for the first token, in order. */
  readonly buffered: UpstreamEvent[];
  readonly firstTokenAt: number;
  /** When the request was sent to the replica. */
  readonly sentAt: number;
}

/** Opens the upstream request and waits (up to firstTokenMs) for its first token. */
async function firstTokens(
  replica: Replica,
  path: "/v1/completions" | "/v1/chat/completions",
  body: string,
  req: InferenceRequest,
  control: AbortController,
  deps: RelayDeps,
  traceHeaders?: Readonly<Record<string, string>>,
): Promise<FirstTokens> {
  const timer = setTimeout(
    () =>
      control.abort(
        new UpstreamError("first-token-timeout", `no token within ${deps.config.timeouts.firstTokenMs} ms`),
      ),
    deps.config.timeouts.firstTokenMs,
  );
  const sentAt = deps.now();
  try {
    const upstream = await openUpstream(
      replica.url,
      path,
      body,
      req.requestId,
      control.signal,
      deps.dispatcher,
      traceHeaders,
    );
    const buffered: UpstreamEvent[] = [];
    for (;;) {
      const event = upstream.take() ?? (await upstream.next());
      buffered.push(event);
      if (event.type !== "usage") return { upstream, buffered, firstTokenAt: deps.now(), sentAt };
    }
  } catch (err) {
    // An abort by our own timer surfaces as its reason (an UpstreamError); a client abort as the client's.
    if (control.signal.aborted && control.signal.reason instanceof UpstreamError && !req.signal.aborted) {
      throw control.signal.reason;
    }
    throw err;
  } finally {
    clearTimeout(timer);
  }
}

/** The rest of a stream after its first tokens, as relay() pulls it. */
interface Rest {
  /** The next event: itself when the replica already sent it, else a promise; undefined after the finish. */
  next(): InferenceEvent | undefined | Promise<InferenceEvent | undefined>;
  close(): void;
}

/**
 * Reads the buffered first events and the rest of the stream, with an inter-token idle timeout that
 * counts only the time spent waiting on the replica: while the consumer (a slow client) holds the stream,
 * the replica is not read and must not be blamed for the silence (the pipeline bounds slow readers).
 * Not a generator: an event already read is handed over without a promise, since this runs per token.
 */
function readRest(
  first: FirstTokens,
  replica: Replica,
  req: InferenceRequest,
  control: AbortController,
  deps: RelayDeps,
  acceptedAt: number,
  trace: RelayTrace,
): Rest {
  const idleLimit = deps.config.timeouts.interTokenMs;
  /** When the relay started waiting on the replica for its next event; undefined while it is not waiting. */
  let waitingSince: number | undefined;
  // One timer per stream, re-armed lazily: cheaper than resetting a timer on every token.
  let idleTimer: NodeJS.Timeout | undefined;
  const checkIdle = () => {
    const idle = waitingSince === undefined ? 0 : deps.now() - waitingSince;
    if (idle >= idleLimit) control.abort(new UpstreamError("inter-token-timeout", `no token for ${idle} ms`));
    else idleTimer = setTimeout(checkIdle, idleLimit - idle);
  };
  idleTimer = setTimeout(checkIdle, idleLimit);

  let finishReason: FinishReason = "unspecified";
  let matchedStop = "";
  let usage: { promptTokens: number; completionTokens: number; cachedTokens: number } | undefined;
  let tokens = 0;
  let finished = false;
  /** The stream's end was read ([DONE], or a close right after the finish chunk). */
  let ended = false;
  let closed = false;
  const buffered = [...first.buffered];
  const handle = (e: UpstreamEvent): InferenceEvent | undefined => {
    switch (e.type) {
      case "text":
        tokens++;
        return e.extras === undefined
          ? { type: "delta", text: e.text, tokenCount: 1 }
          : { type: "delta", text: e.text, tokenCount: 1, extras: e.extras };
      case "finish":
        finished = true;
        finishReason = FINISH_REASONS[e.reason] ?? "unspecified";
        matchedStop = e.stopReason;
        return undefined;
      case "usage":
        usage = {
          promptTokens: e.promptTokens,
          completionTokens: e.completionTokens,
          cachedTokens: e.cachedTokens,
        };
        trace.usage = usage;
        return undefined;
      case "done":
        ended = true;
        return undefined;
    }
  };
  /** A failure of the upstream read, as the relay reports it; a close after the finish chunk is an end. */
  const failed = (err: unknown): void => {
    if (control.signal.aborted && control.signal.reason instanceof UpstreamError && !req.signal.aborted) {
      throw control.signal.reason;
    }
    // A replica that closes the connection right after its finish chunk has still finished.
    if (finished && err instanceof UpstreamError && err.failure === "broken-stream") ended = true;
    else throw err;
  };
  const finish = (): InferenceEvent => {
    closed = true;
    clearTimeout(idleTimer);
    if (!finished) throw new UpstreamError("broken-stream", "the stream ended without a finish reason");
    deps.outliers.success(replica);
    return {
      type: "finish",
      finishReason,
      matchedStop,
      usage: usage ?? { promptTokens: 0, completionTokens: tokens, cachedTokens: 0 },
      timeToFirstTokenMs: first.firstTokenAt - acceptedAt,
      totalMs: deps.now() - acceptedAt,
    };
  };
  /** Waits on the replica (only this wait counts toward the idle limit), then goes on. */
  const waitThenNext = (): Promise<InferenceEvent | undefined> => {
    waitingSince = deps.now();
    return first.upstream.next().then(
      (event) => {
        waitingSince = undefined;
        buffered.push(event);
        return next();
      },
      (err: unknown) => {
        waitingSince = undefined;
        failed(err);
        return next();
      },
    );
  };
  const next = (): InferenceEvent | undefined | Promise<InferenceEvent | undefined> => {
    while (!ended) {
      let event: UpstreamEvent | undefined;
      try {
        event = buffered.shift() ?? first.upstream.take();
      } catch (err) {
        failed(err);
        continue;
      }
      if (event === undefined) return waitThenNext();
      const out = handle(event);
      if (out !== undefined) return out;
    }
    return closed ? undefined : finish();
  };
  return {
    next,
    close() {
      closed = true;
      clearTimeout(idleTimer);
    },
  };
}
