/**
 * What an OpenAI client reads back: chat.completion / text_completion JSON bodies, and the SSE chunks of a
 * stream, shaped as vLLM's (role chunk, one chunk per token, finish chunk, usage chunk, `data: [DONE]`).
 * The per-token chunk is built from two constant halves per request, since it is written for every token.
 * `write` is the pull point of the relay: it resolves once the socket can take more (or the client left).
 */
import type * as http from "node:http";
import { ServerResponse } from "node:http";
import type * as http2 from "node:http2";
import type { Socket } from "node:net";
import type { InferenceEvent } from "../../request/inference-request.js";

export type HttpRequest = http.IncomingMessage | http2.Http2ServerRequest;
export type HttpResponse = http.ServerResponse | http2.Http2ServerResponse;

type FinishEvent = Extract<InferenceEvent, { type: "finish" }>;
type DeltaEvent = Extract<InferenceEvent, { type: "delta" }>;

interface ToolCallDelta {
  index?: number;
  id?: string;
  type?: string;
  function?: { name?: string; arguments?: string };
}

/**
 * Builds a non-streamed reply from the stream's deltas, as vLLM builds its own: the text, tool calls
 * merged by index (id, type and name from their first delta, arguments concatenated), other string
 * fields of the deltas concatenated (reasoning_content), and logprobs joined in order.
 */
export function createReplyCollector(chat: boolean) {
  let text = "";
  const toolCalls: { id?: string; type: string; function: { name: string; arguments: string } }[] = [];
  const other: Record<string, string> = {};
  const chatLogprobs: unknown[] = [];
  const completionLogprobs = {
    text_offset: [] as unknown[],
    token_logprobs: [] as unknown[],
    tokens: [] as unknown[],
    top_logprobs: [] as unknown[],
  };
  let sawLogprobs = false;
  return {
    add(e: DeltaEvent) {
      text += e.text;
      const extras = e.extras;
      if (extras === undefined) return;
      for (const [k, v] of Object.entries(extras.delta ?? {})) {
        if (k === "tool_calls" && Array.isArray(v)) {
          for (const d of v as ToolCallDelta[]) {
            const i =
              typeof d.index === "number" && d.index >= 0 && d.index < 128 ? d.index : toolCalls.length;
            toolCalls[i] ??= { type: "function", function: { name: "", arguments: "" } };
            const call = toolCalls[i];
            if (typeof d.id === "string") call.id = d.id;
            if (typeof d.type === "string") call.type = d.type;
            if (typeof d.function?.name === "string") call.function.name += d.function.name;
            if (typeof d.function?.arguments === "string") call.function.arguments += d.function.arguments;
          }
        } else if (typeof v === "string") other[k] = (other[k] ?? "") + v;
      }
      const lp = extras.logprobs as Record<string, unknown[] | undefined> | undefined;
      if (lp !== undefined && lp !== null && typeof lp === "object") {
        sawLogprobs = true;
        if (chat) chatLogprobs.push(...(lp.content ?? []));
        else
          for (const key of Object.keys(completionLogprobs) as (keyof typeof completionLogprobs)[])
            completionLogprobs[key].push(...(lp[key] ?? []));
      }
    },
    /** The choice's message (chat) or text fields, and its logprobs. */
    choice(): Record<string, unknown> {
      const logprobs = !sawLogprobs ? null : chat ? { content: chatLogprobs } : completionLogprobs;
      if (!chat) return { text, logprobs };
      const calls = toolCalls.filter((c) => c !== undefined);
      const message = {
        role: "assistant",
        content: calls.length > 0 && text === "" ? null : text,
        ...other,
        tool_calls: calls,
      };
      return { message, logprobs };
    },
  };
}

/** Unix seconds, as OpenAI's `created`. */
export const unixNow = () => Math.floor(Date.now() / 1000);

export function sendJson(
  res: HttpResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
) {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", ...headers });
  res.end(text);
}

export function usageOf(e: FinishEvent) {
  return {
    prompt_tokens: e.usage.promptTokens,
    completion_tokens: e.usage.completionTokens,
    total_tokens: e.usage.promptTokens + e.usage.completionTokens,
    prompt_tokens_details: { cached_tokens: e.usage.cachedTokens },
  };
}

/** The JSON body of a request that did not ask for a stream. */
export function completeBody(
  id: string,
  model: string,
  chat: boolean,
  reply: ReturnType<typeof createReplyCollector>,
  e: FinishEvent,
) {
  const finish_reason = e.finishReason === "unspecified" ? null : e.finishReason;
  const stop_reason = e.matchedStop === "" ? null : e.matchedStop;
  return {
    id,
    object: chat ? "chat.completion" : "text_completion",
    created: unixNow(),
    model,
    choices: [{ index: 0, ...reply.choice(), finish_reason, stop_reason }],
    usage: usageOf(e),
  };
}

/** The SSE events of one streamed response. */
export interface StreamRenderer {
  /** The chat stream's first chunk (role, empty content); "" for text completions. */
  roleChunk(): string;
  /** A delta: the prebuilt text chunk, or, with extras (tool calls, logprobs), the chunk built whole. */
  delta(e: DeltaEvent): string;
  finish(e: FinishEvent): string;
  usage(e: FinishEvent): string;
}

export function streamRenderer(id: string, model: string, chat: boolean): StreamRenderer {
  const base = { id, object: chat ? "chat.completion.chunk" : "text_completion", created: unixNow(), model };
  const chunk = (choice: Record<string, unknown>) =>
    `data: ${JSON.stringify({ ...base, choices: [{ index: 0, ...choice, logprobs: null }] })}\n\n`;
  const head = `data: ${JSON.stringify(base).slice(0, -1)},"choices":[{"index":0,${chat ? '"delta":{"content":' : '"text":'}`;
  const tail = `${chat ? "}" : ""},"finish_reason":null,${chat ? "" : '"stop_reason":null,'}"logprobs":null}]}\n\n`;
  return {
    roleChunk: () => (chat ? chunk({ delta: { role: "assistant", content: "" }, finish_reason: null }) : ""),
    delta(e) {
      if (e.extras === undefined) return `${head}${JSON.stringify(e.text)}${tail}`;
      const logprobs = e.extras.logprobs ?? null;
      const choice = chat
        ? {
            index: 0,
            delta: { ...(e.text !== "" ? { content: e.text } : {}), ...e.extras.delta },
            logprobs,
            finish_reason: null,
          }
        : { index: 0, text: e.text, logprobs, finish_reason: null, stop_reason: null };
      return `data: ${JSON.stringify({ ...base, choices: [choice] })}\n\n`;
    },
    finish(e) {
      const reason = e.finishReason === "unspecified" ? null : e.finishReason;
      const stopReason = e.matchedStop === "" ? null : e.matchedStop;
      return chat
        ? chunk({ delta: { content: "" }, finish_reason: reason, stop_reason: stopReason })
        : chunk({ text: "", finish_reason: reason, stop_reason: stopReason });
    },
    usage: (e) => `data: ${JSON.stringify({ ...base, choices: [], usage: usageOf(e) })}\n\n`,
  };
}

/** Whether nothing more can be written: the response ended, or its socket or HTTP/2 stream is gone. */
export function isClosed(res: HttpResponse): boolean {
  if (res.writableEnded) return true;
  if ("stream" in res) return res.stream.destroyed || res.stream.closed;
  return res.destroyed || (res.socket?.destroyed ?? true);
}

/**
 * Writes the SSE events of one streamed response. The first goes through `res.write`, which sends the
 * head with it; on HTTP/1.1 the others go straight to the socket as whole chunks of the chunked encoding,
 * framed as Node frames them (hex byte length, CRLF, data, CRLF): Node's res.write makes four socket writes
 * of each event, corked until the next tick and sent as one writev, a third of the writer's CPU per
 * relayed token. The bytes on the wire are the same (test/integration/wire-bytes.test.ts). HTTP/2
 * responses, and HTTP/1.1 ones without chunked encoding, always use res.write.
 */
export function createEventWriter(res: HttpResponse): {
  write(text: string, signal: AbortSignal): Promise<void>;
} {
  let socket: Socket | undefined;
  let first = true;
  return {
    write(text, signal) {
      if (signal.aborted || isClosed(res)) return RESOLVED;
      if (socket !== undefined)
        return settle(
          res,
          socket.write(`${Buffer.byteLength(text).toString(16)}\r\n${text}\r\n`),
          socket,
          signal,
        );
      const flushed = (res as http.ServerResponse).write(text);
      if (first && res instanceof ServerResponse && res.chunkedEncoding) socket = res.socket ?? undefined;
      first = false;
      return settle(res, flushed, res, signal);
    },
  };
}

/**
 * Writes and, when the socket's buffer is full, waits until it drains, the response closes or `signal`
 * aborts, whichever is first. A response that is already closed gets nothing and never waits (a write on a
 * reset HTTP/2 stream would wait for a drain that never comes). Callers check `signal` after each write.
 */
export function write(res: HttpResponse, text: string, signal: AbortSignal): Promise<void> {
  if (signal.aborted || isClosed(res)) return RESOLVED;
  return settle(res, (res as http.ServerResponse).write(text), res, signal);
}

/** Resolved at once if the write was flushed; else when `drains` drains, `res` closes or `signal` aborts. */
function settle(
  res: HttpResponse,
  flushed: boolean,
  drains: HttpResponse | Socket,
  signal: AbortSignal,
): Promise<void> {
  if (flushed) return RESOLVED;
  return new Promise((resolve) => {
    const done = () => {
      drains.off("drain", done);
      res.off("close", done);
      signal.removeEventListener("abort", done);
      resolve();
    };
    drains.on("drain", done);
    res.on("close", done);
    signal.addEventListener("abort", done, { once: true });
    if (isClosed(res)) done();
  });
}

const RESOLVED = Promise.resolve();
