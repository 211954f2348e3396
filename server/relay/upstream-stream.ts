/**
 * One request to one vLLM replica: builds vLLM's JSON body from an InferenceRequest, sends it with undici,
 * and reads the SSE answer as a pull-based stream of UpstreamEvents (nothing is read from the socket until
 * the consumer asks, so a slow client slows the replica's socket, not the gateway's memory).
 *
 * Failures are classified here (UpstreamFailure) and nowhere else; their raw text is kept for logs only.
 */
import { createParser, type EventSourceMessage } from "eventsource-parser";
import { type Dispatcher, request } from "undici";
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

export interface UpstreamResponse {
  /** The events, pulled one at a time. Throws UpstreamError, or the signal's reason when aborted. */
  readonly events: AsyncIterable<UpstreamEvent>;
}

/**
 * Sends the request. Resolves once the replica answered 200 (vLLM sends its headers with the first token);
 * rejects with UpstreamError for a non-200 answer or a connection failure, or with the signal's reason.
 */
export async function openUpstream(
  url: string,
  path: "/v1/completions" | "/v1/chat/completions",
  body: string,
  requestId: string,
  signal: AbortSignal,
  dispatcher: Dispatcher,
): Promise<UpstreamResponse> {
  let res: Dispatcher.ResponseData;
  try {
    res = await request(`${url}${path}`, {
      method: "POST",
      body,
      headers: { "content-type": "application/json", accept: "text/event-stream", "x-request-id": requestId },
      signal,
      dispatcher,
    });
  } catch (err) {
    if (signal.aborted) throw signal.reason;
    throw new UpstreamError("connect", describeError(err));
  }
  if (res.statusCode !== 200) {
    const text = await readLimited(res.body, MAX_ERROR_BODY).catch(() => "");
    const retryAfter = Number(res.headers["retry-after"]);
    const retryAfterMs = Number.isFinite(retryAfter) && retryAfter > 0 ? retryAfter * 1000 : undefined;
    throw new UpstreamError(
      classifyStatus(res.statusCode, text),
      `HTTP ${res.statusCode}: ${text.slice(0, 300)}`,
      retryAfterMs,
    );
  }
  return { events: parseEvents(res.body, signal) };
}

/** The failure an HTTP error status (and its body's text) from a replica stands for. */
export function classifyStatus(status: number, text: string): UpstreamFailure {
  if (status === 429) return "overloaded";
  if (status === 400 && /maximum context length|longer than the maximum model length/i.test(text)) {
    return "context-length";
  }
  if (status === 404 || status >= 500) return "unavailable";
  return "rejected";
}

async function readLimited(body: Dispatcher.ResponseData["body"], limit: number): Promise<string> {
  let text = "";
  for await (const chunk of body) {
    text += (chunk as Buffer).toString("utf8");
    if (text.length >= limit) {
      body.destroy();
      break;
    }
  }
  return text.slice(0, limit);
}

/** A network error's code and message, for logs. */
export function describeError(err: unknown): string {
  const e = err as { code?: string; message?: string } | undefined;
  return `${e?.code ?? "error"} ${e?.message ?? String(err)}`;
}

/** Reads SSE events off the body, pulling one network chunk at a time. */
async function* parseEvents(
  body: Dispatcher.ResponseData["body"],
  signal: AbortSignal,
): AsyncGenerator<UpstreamEvent> {
  const pending: UpstreamEvent[] = [];
  let failure: UpstreamError | undefined;
  let done = false;
  let bytesSinceEvent = 0;
  const parser = createParser({
    onEvent(message: EventSourceMessage) {
      bytesSinceEvent = 0;
      if (done || failure !== undefined) return;
      if (message.data === "[DONE]") {
        done = true;
        pending.push({ type: "done" });
        return;
      }
      try {
        for (const e of interpretChunk(JSON.parse(message.data))) pending.push(e);
      } catch (err) {
        failure =
          err instanceof UpstreamError
            ? err
            : new UpstreamError("protocol", `bad event: ${describeError(err)}`);
      }
    },
  });
  const decoder = new TextDecoder();
  let relayedText = false;
  try {
    for await (const chunk of body) {
      // A stream past its first token lets first tokens of other streams go first (token-priority.ts).
      if (relayedText) await afterFirstTokens();
      const text = decoder.decode(chunk as Buffer, { stream: true });
      bytesSinceEvent += text.length;
      parser.feed(text);
      // The parser buffers an unfinished event: bound it, or a broken replica could grow it forever.
      if (bytesSinceEvent > MAX_EVENT_BYTES) throw new UpstreamError("protocol", "event too large");
      while (pending.length > 0) {
        // Events already parsed are not handed on once the request is aborted (a cancelled client's
        // stream must stop at once, not after the rest of a network chunk).
        if (signal.aborted) throw signal.reason;
        const event = pending.shift() as UpstreamEvent;
        if (event.type === "text") relayedText = true;
        yield event;
      }
      if (failure !== undefined) throw failure;
      if (done) return;
    }
  } catch (err) {
    if (signal.aborted) throw signal.reason;
    if (err instanceof UpstreamError) throw err;
    throw new UpstreamError("broken-stream", describeError(err));
  } finally {
    if (!body.destroyed) body.destroy();
  }
  throw new UpstreamError("broken-stream", "the stream ended without [DONE]");
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
  if (c.usage !== undefined && c.usage !== null) {
    const n = (v: unknown) => (typeof v === "number" && Number.isFinite(v) && v >= 0 ? Math.floor(v) : 0);
    events.push({
      type: "usage",
      promptTokens: n(c.usage.prompt_tokens),
      completionTokens: n(c.usage.completion_tokens),
      cachedTokens: n(c.usage.prompt_tokens_details?.cached_tokens),
    });
  }
  return events;
}
