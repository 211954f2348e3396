/**
 * One request to one vLLM replica: builds vLLM's JSON body from an InferenceRequest, sends it with undici,
 * and reads the SSE answer as a pull-based stream of UpstreamEvents (nothing is read from the socket until
 * the consumer asks, so a slow client slows the replica's socket, not the gateway's memory).
 *
 * Failures are classified here (UpstreamFailure) and nowhere else; their raw text is kept for logs only.
 */
import { createParser, type EventSourceMessage } from "eventsource-parser";
import type { Dispatcher } from "undici";
import type { UpstreamFailure } from "../errors/gateway-error.js";
import type { InferenceRequest } from "../request/inference-request.js";
import { afterFirstTokens } from "./token-priority.js";

/**
 * Fields of a chunk's choice beyond its text, kept as the replica sent them for OpenAI clients: the
 * delta's other fields (tool_calls, reasoning_content, ...) and the choice's logprobs.
 */
export interface ChunkExtras {
  readonly delta?: Readonly<Record<string, unknown>>;
  readonly logprobs?: unknown;
}

/** What a replica streams, normalised across /v1/completions and /v1/chat/completions. */
export type UpstreamEvent =
  | { readonly type: "text"; readonly text: string; readonly extras?: ChunkExtras }
  | { readonly type: "finish"; readonly reason: string; readonly stopReason: string }
  | {
      readonly type: "usage";
      readonly promptTokens: number;
      readonly completionTokens: number;
      readonly cachedTokens: number;
    }
  | { readonly type: "done" };

/** A classified failure of an upstream attempt. `detail` is for logs, never for clients. */
export class UpstreamError extends Error {
  override readonly name = "UpstreamError";
  constructor(
    readonly failure: UpstreamFailure,
    readonly detail: string,
    readonly retryAfterMs?: number,
  ) {
    super(`${failure}: ${detail}`);
  }
}

/** Largest error body read from a replica, and largest single SSE event accepted. */
const MAX_ERROR_BODY = 64 * 1024;
const MAX_EVENT_BYTES = 1024 * 1024;

/** vLLM's request body for a request (always streamed, always with usage). */
export function upstreamBody(
  req: InferenceRequest,
  servedModelName: string,
  defaultMaxTokens: number,
): string {
  const s = req.sampling;
  const body: Record<string, unknown> = {
    ...req.passthrough,
    model: servedModelName,
    stream: true,
    // Usage on every chunk, so that a stream cut short is charged what the replica counted.
    stream_options: { include_usage: true, continuous_usage_stats: true },
    max_tokens: s.maxTokens ?? defaultMaxTokens,
  };
  if (req.prompt !== undefined) body.prompt = req.prompt;
  else
    body.messages = (req.messages ?? []).map((m) => ({
      role: m.role,
      content: m.content,
      ...(m.name ? { name: m.name } : {}),
    }));
  if (s.temperature !== undefined) body.temperature = s.temperature;
  if (s.topP !== undefined) body.top_p = s.topP;
  if (s.topK !== undefined) body.top_k = s.topK;
  if (s.stop.length > 0) body.stop = s.stop;
  if (s.seed !== undefined) body.seed = s.seed;
  if (s.presencePenalty !== undefined) body.presence_penalty = s.presencePenalty;
  if (s.frequencyPenalty !== undefined) body.frequency_penalty = s.frequencyPenalty;
  // vLLM's priority scheduling: lower runs first (the pipeline resolves an unset criticality).
  if (req.priority !== undefined && req.priority !== "standard")
    body.priority = req.priority === "critical" ? -1 : 1;
  return JSON.stringify(body);
}

/**
 * An upstream response being read. Events are parsed as the replica's bytes arrive and wait here for the
 * relay; once MAX_PENDING events or network chunks wait, the replica's socket is paused until the relay
 * has taken them all, so a slow client holds back the replica, not the gateway's memory.
 */
export interface UpstreamStream {
  /**
   * The next event already read, or undefined if none is yet. Throws the stream's failure (UpstreamError,
   * or the signal's reason once aborted) when every event before it has been taken.
   */
  take(): UpstreamEvent | undefined;
  /** Waits for the next event (take's, when there is one); rejects as take throws. */
  next(): Promise<UpstreamEvent>;
}

/**
 * Sends the request. Resolves once the replica answered 200 (vLLM sends its headers with the first token);
 * rejects with UpstreamError for a non-200 answer or a connection failure, or with the signal's reason.
 */
export function openUpstream(
  url: string,
  path: "/v1/completions" | "/v1/chat/completions",
  body: string,
  requestId: string,
  signal: AbortSignal,
  dispatcher: Dispatcher,
  traceHeaders?: Readonly<Record<string, string>>,
): Promise<UpstreamStream> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise((resolve, reject) => {
    const stream = new ReplicaStream(signal, resolve, reject);
    dispatcher.dispatch(
      {
        origin: url,
        path,
        method: "POST",
        body,
        headers: {
          "content-type": "application/json",
          accept: "text/event-stream",
          "x-request-id": requestId,
          ...traceHeaders,
        },
      },
      stream,
    );
  });
}

/**
 * Events parsed and network chunks read, not yet taken by the relay, beyond which the replica's socket is
 * paused: with one event per chunk as vLLM writes them, 32 of about 250 bytes; a chunk is at most one
 * socket read (64 KiB). Pausing below this bound would cost a pause and resume per token (undici puts the
 * rest of the read back into the socket each time).
 */
const MAX_PENDING = 32;

/**
 * After [DONE], how long the rest of the response (its final empty chunk) may take before the request is
 * aborted. A replica ends its response with [DONE], so this only bounds a broken one; meanwhile the
 * connection is kept for the next request instead of being cut when the relay finishes.
 */
const AFTER_DONE_MS = 1000;

/**
 * The dispatch handler of one upstream request (undici's handler API: callbacks on the connection's own
 * reads, with pause and resume), and the UpstreamStream the relay reads. It replaces undici's request(),
 * whose body Readable and async iterator cost more per token than the rest of the relay together.
 */
class ReplicaStream implements Dispatcher.DispatchHandler, UpstreamStream {
  #controller: Dispatcher.DispatchController | undefined;
  #status = 0;
  #retryAfterMs: number | undefined;
  #errorText = "";
  /** Events parsed and not yet taken (the socket is paused beyond MAX_PENDING). */
  readonly #queue: UpstreamEvent[] = [];
  #failure: unknown;
  #done = false;
  #ended = false;
  /** Network chunks waiting for their turn behind other streams' first tokens (token-priority.ts). */
  readonly #held: Buffer[] = [];
  #relayedText = false;
  #bytesSinceEvent = 0;
  /** The relay waiting in next(), if it is. */
  #reader: { resolve(event: UpstreamEvent): void; reject(err: unknown): void } | undefined;
  #afterDone: NodeJS.Timeout | undefined;
  readonly #decoder = new TextDecoder();
  readonly #parser = createParser({ onEvent: (message) => this.#onEvent(message) });
  readonly #signal: AbortSignal;
  #opened: ((stream: UpstreamStream) => void) | undefined;
  #refused: ((err: unknown) => void) | undefined;
  readonly #release = () => {
    this.#consumeHeld();
    if (this.#queue.length > 0) this.#wakeReader();
    else this.#resumeIfDrained();
  };
  /** The signal aborted (kept here: take() runs for every token). */
  #aborted = false;
  readonly #onAbort = () => {
    this.#aborted = true;
    if (this.#done) {
      // The relay is finished with a stream that said [DONE]: let its last bytes arrive, within a bound.
      this.#afterDone ??= setTimeout(() => this.#abort(this.#signal.reason), AFTER_DONE_MS);
      return;
    }
    this.#abort(this.#signal.reason);
  };

  constructor(
    signal: AbortSignal,
    opened: (stream: UpstreamStream) => void,
    refused: (err: unknown) => void,
  ) {
    this.#signal = signal;
    this.#opened = opened;
    this.#refused = refused;
    signal.addEventListener("abort", this.#onAbort);
  }

  take(): UpstreamEvent | undefined {
    // Events already parsed are not handed on once the request is aborted: a cancelled client's stream
    // stops at once, not after the rest of a network chunk.
    if (this.#aborted && !this.#done) throw this.#signal.reason;
    const event = this.#queue.shift();
    if (event === undefined) {
      if (this.#failure !== undefined) throw this.#failure;
      return undefined;
    }
    if (event.type === "text") this.#relayedText = true;
    this.#resumeIfDrained();
    return event;
  }

  next(): Promise<UpstreamEvent> {
    try {
      const event = this.take();
      if (event !== undefined) return Promise.resolve(event);
    } catch (err) {
      return Promise.reject(err);
    }
    // One promise per wait, settled by #wakeReader with the event itself (this runs for most tokens).
    return new Promise((resolve, reject) => {
      this.#reader = { resolve, reject };
    });
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.#controller = controller;
    if (this.#signal.aborted) controller.abort(this.#signal.reason);
  }

  onResponseStart(
    _controller: Dispatcher.DispatchController,
    statusCode: number,
    headers: Record<string, string | string[] | undefined>,
  ): void {
    this.#status = statusCode;
    if (statusCode === 200) {
      this.#opened?.(this);
      this.#opened = undefined;
      return;
    }
    const retryAfter = Number(headers["retry-after"]);
    this.#retryAfterMs = Number.isFinite(retryAfter) && retryAfter > 0 ? retryAfter * 1000 : undefined;
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (this.#status !== 200) {
      if (this.#errorText.length < MAX_ERROR_BODY) this.#errorText += chunk.toString("utf8");
      return;
    }
    if (this.#relayedText) {
      // A stream past its first token lets first tokens of other streams go first (token-priority.ts).
      if (this.#held.push(chunk) === 1) afterFirstTokens(this.#release);
    } else {
      this.#consume(chunk);
      if (this.#queue.length > 0) this.#wakeReader();
    }
    if (this.#queue.length + this.#held.length >= MAX_PENDING) controller.pause();
  }

  onResponseEnd(): void {
    this.#ended = true;
    this.#consumeHeld(); // what came before the end is read before the end is judged
    clearTimeout(this.#afterDone);
    this.#signal.removeEventListener("abort", this.#onAbort);
    if (this.#status !== 200) {
      const text = this.#errorText.slice(0, MAX_ERROR_BODY);
      this.#refuse(
        new UpstreamError(
          classifyStatus(this.#status, text),
          `HTTP ${this.#status}: ${text.slice(0, 300)}`,
          this.#retryAfterMs,
        ),
      );
      return;
    }
    if (!this.#done) this.#fail(new UpstreamError("broken-stream", "the stream ended without [DONE]"));
    else this.#wakeReader();
  }

  onResponseError(_controller: Dispatcher.DispatchController, err: Error): void {
    this.#ended = true;
    if (this.#status === 200) this.#consumeHeld();
    clearTimeout(this.#afterDone);
    this.#signal.removeEventListener("abort", this.#onAbort);
    const failure = this.#signal.aborted
      ? this.#signal.reason
      : err instanceof UpstreamError
        ? err
        : new UpstreamError(this.#status === 0 ? "connect" : "broken-stream", describeError(err));
    if (this.#opened !== undefined || this.#status !== 200) this.#refuse(failure);
    else this.#fail(failure);
  }

  #consume(chunk: Buffer): void {
    this.#bytesSinceEvent += chunk.length;
    this.#parser.feed(this.#decoder.decode(chunk, { stream: true }));
    // The parser buffers an unfinished event: bound it, or a broken replica could grow it forever.
    if (this.#bytesSinceEvent > MAX_EVENT_BYTES)
      this.#abort(new UpstreamError("protocol", "event too large"));
  }

  #consumeHeld(): void {
    for (const chunk of this.#held) this.#consume(chunk);
    this.#held.length = 0;
  }

  #onEvent(message: EventSourceMessage): void {
    this.#bytesSinceEvent = 0;
    if (this.#done || this.#failure !== undefined) return;
    if (message.data === "[DONE]") {
      this.#done = true;
      this.#queue.push({ type: "done" });
      return;
    }
    try {
      for (const e of interpretChunk(JSON.parse(message.data))) this.#queue.push(e);
    } catch (err) {
      this.#abort(
        err instanceof UpstreamError
          ? err
          : new UpstreamError("protocol", `bad event: ${describeError(err)}`),
      );
    }
  }

  #resumeIfDrained(): void {
    if (this.#queue.length === 0 && this.#held.length === 0 && !this.#ended && this.#controller?.paused)
      this.#controller.resume();
  }

  /** Ends the request with `failure` (the events before it are still taken first). */
  #abort(failure: unknown): void {
    this.#fail(failure);
    // Not answered yet: the caller hears now, also while undici still connects or holds the request in
    // its queue (no controller before then: it aborts the request when it gets to it, onRequestStart).
    if (this.#opened !== undefined) this.#refuse(failure);
    if (!this.#ended) this.#controller?.abort(failure as Error);
  }

  #fail(failure: unknown): void {
    this.#failure ??= failure;
    this.#wakeReader();
  }

  #refuse(err: unknown): void {
    if (this.#opened === undefined) {
      this.#fail(err);
      return;
    }
    this.#opened = undefined;
    this.#refused?.(err);
  }

  /** Hands the waiting relay its next event or the failure (nothing if neither is there yet). */
  #wakeReader(): void {
    const reader = this.#reader;
    if (reader === undefined) return;
    let event: UpstreamEvent | undefined;
    try {
      event = this.take();
    } catch (err) {
      this.#reader = undefined;
      reader.reject(err);
      return;
    }
    if (event === undefined) return;
    this.#reader = undefined;
    reader.resolve(event);
  }
}

/** The failure an HTTP error status (and its body's text) from a replica stands for. */
export function classifyStatus(status: number, text: string): UpstreamFailure {
  if (status === 429) return "overloaded";
  if (status === 400 && /maximum context length|longer than the maximum model length/i.test(text)) {
    return "context-length";
  }
  if (status === 404) return "not-found";
  if (status >= 500) return "unavailable";
  return "rejected";
}

/** A network error's code and message, for logs. */
export function describeError(err: unknown): string {
  const e = err as { code?: string; message?: string } | undefined;
  return `${e?.code ?? "error"} ${e?.message ?? String(err)}`;
}

/** Turns one parsed vLLM chunk into events; throws UpstreamError for vLLM's in-band error event. */
function interpretChunk(chunk: unknown): UpstreamEvent[] {
  if (chunk === null || typeof chunk !== "object")
    throw new UpstreamError("protocol", "event is not an object");
  const c = chunk as {
    error?: { message?: unknown };
    choices?: {
      text?: unknown;
      delta?: { content?: unknown } | null;
      logprobs?: unknown;
      finish_reason?: unknown;
      stop_reason?: unknown;
    }[];
    usage?: {
      prompt_tokens?: unknown;
      completion_tokens?: unknown;
      prompt_tokens_details?: { cached_tokens?: unknown } | null;
    } | null;
  };
  if (c.error !== undefined)
    throw new UpstreamError("broken-stream", `in-band error: ${String(c.error?.message)}`);
  const events: UpstreamEvent[] = [];
  // A chunk's usage (vLLM's continuous usage stats count the chunk's own tokens) goes before its text, so
  // that a stream cut while that text is being relayed is charged for it.
  if (c.usage !== undefined && c.usage !== null) {
    const n = (v: unknown) => (typeof v === "number" && Number.isFinite(v) && v >= 0 ? Math.floor(v) : 0);
    events.push({
      type: "usage",
      promptTokens: n(c.usage.prompt_tokens),
      completionTokens: n(c.usage.completion_tokens),
      cachedTokens: n(c.usage.prompt_tokens_details?.cached_tokens),
    });
  }

  const choice = Array.isArray(c.choices) ? c.choices[0] : undefined;
  if (choice !== undefined) {
    const text = typeof choice.text === "string" ? choice.text : choice.delta?.content;
    let extras: ChunkExtras | undefined;
    if (choice.delta !== undefined && choice.delta !== null && typeof choice.delta === "object") {
      const { content: _content, role: _role, ...rest } = choice.delta as Record<string, unknown>;
      for (const k in rest) if (rest[k] === null || rest[k] === undefined) delete rest[k];
      if (Object.keys(rest).length > 0) extras = { delta: rest };
    }
    if (choice.logprobs !== undefined && choice.logprobs !== null)
      extras = { ...extras, logprobs: choice.logprobs };
    if ((typeof text === "string" && text !== "") || extras !== undefined) {
      events.push(
        extras === undefined
          ? { type: "text", text: text as string }
          : { type: "text", text: typeof text === "string" ? text : "", extras },
      );
    }
    if (typeof choice.finish_reason === "string") {
      events.push({
        type: "finish",
        reason: choice.finish_reason,
        stopReason: typeof choice.stop_reason === "string" ? choice.stop_reason : "",
      });
    }
  }
  return events;
}
