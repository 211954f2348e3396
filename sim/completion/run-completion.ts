/**
 * The second half of serving a completion: the engine runs the sequence and each token it emits is
 * written as vLLM writes it. Streaming: headers and the role chunk with the first token, one chunk per
 * token, a finish chunk, the usage chunk when asked, then `data: [DONE]`; an error after the first token
 * goes in-band. Not streaming: one JSON body at the end. Per-request faults (drop, in-band error, stall,
 * slow) act here. A client that goes away aborts the sequence at once, freeing its KV blocks.
 */
import type * as http from "node:http";
import type { ResponsesRenderer } from "../../common/openai/responses-events.js";
import type { Clock } from "../engine/clock.js";
import type { Engine, SequenceResult } from "../engine/engine.js";
import type { RequestFault } from "../faults/faults.js";
import { createStallGate } from "../faults/stall-gate.js";
import { chatLogprob, completionLogprobs } from "../text/logprobs.js";
import type { PreparedCompletion } from "./prepare-completion.js";
import { sendError, sendJson } from "./send-json.js";
import { VllmError } from "./vllm-error.js";

/** Where a completion runs and what happens to it. */
export interface CompletionContext {
  readonly engine: Engine;
  /** The served model name, echoed in every chunk. */
  readonly model: string;
  readonly fault: RequestFault;
  readonly requestId: string;
  readonly clock: Clock;
  /** Called when the first token is written (wall-clock ms), for /sim/traces. */
  readonly onFirstToken: (wallClockMs: number) => void;
  /** Called once when the sequence ends, however it ends (for the request's span). */
  readonly onEnd?: (result: SequenceResult) => void;
  /** Answer in the Responses API's shapes (POST /v1/responses) instead of chat completion chunks. */
  readonly responses?: ResponsesRenderer;
}

/**
 * Submits a prepared completion to the engine and writes its tokens to `res` as SSE chunks, or as one JSON
 * body when the request did not ask for a stream. Returns at once; the response ends with the sequence.
 */
export function runCompletion(
  req: http.IncomingMessage,
  res: http.ServerResponse,
  prepared: PreparedCompletion,
  context: CompletionContext,
): void {
  const { engine, model, fault, requestId, clock, onFirstToken, responses } = context;
  const { plan, stream, chat, toolCall } = prepared;
  const id = `${chat ? "chatcmpl" : "cmpl"}-${requestId}`;
  const createdAt = Math.floor(Date.now() / 1000);
  const base = {
    id,
    object: chat ? "chat.completion.chunk" : "text_completion",
    created: createdAt,
    model,
  };
  const gate = createStallGate(fault, clock);
  let text = "";
  let ended = false;

  /** Tokens written so far, for continuous usage stats. */
  let written = 0;
  const promptCount = prepared.promptTokens.length;
  const chunk = (choice: Record<string, unknown>, extra: Record<string, unknown> = {}) =>
    `data: ${JSON.stringify({
      ...base,
      choices: [{ index: 0, ...choice }],
      ...extra,
      // vLLM's continuous_usage_stats: the usage so far on every chunk.
      ...(prepared.continuousUsage
        ? {
            usage: {
              prompt_tokens: promptCount,
              total_tokens: promptCount + written,
              completion_tokens: written,
            },
          }
        : {}),
    })}\n\n`;

  const handle = engine.submit(
    {
      promptTokens: prepared.promptTokens,
      targetTokens: plan.deltas.length,
      finishReason: plan.finishReason,
      outputTokens: plan.tokenIds,
      ...(prepared.lora !== undefined ? { lora: prepared.lora } : {}),
      ...(fault.slow !== undefined ? { slowFactor: fault.slow } : {}),
    },
    {
      onToken(index) {
        if (fault.dropAfter === index) return drop();
        if (stream && index === 0) {
          gate.write(() => {
            onFirstToken(wallClock());
            res.writeHead(200, {
              "content-type": "text/event-stream; charset=utf-8",
              "cache-control": "no-cache",
            });
            if (responses !== undefined) res.write(responses.opening());
            else if (chat)
              res.write(
                chunk({ delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null }),
              );
          });
        }
        if (fault.errorAfter === index) return failMidStream();
        const delta = plan.deltas[index] ?? "";
        const offset = text.length;
        text += delta;
        if (!stream) return;
        const lp = prepared.logprobs?.[index];
        written = index + 1;
        let piece: string;
        if (responses !== undefined) piece = responses.delta(delta);
        else if (toolCall !== undefined) {
          // vLLM's tool parsers: the call's id, type and name with the first piece, then arguments.
          const call =
            index === 0
              ? {
                  id: toolCall.id,
                  type: "function",
                  index: 0,
                  function: { name: toolCall.name, arguments: delta },
                }
              : { index: 0, function: { arguments: delta } };
          piece = chunk({ delta: { tool_calls: [call] }, logprobs: null, finish_reason: null });
        } else if (chat) {
          const logprobs = lp === undefined ? null : { content: [chatLogprob(lp)] };
          piece = chunk({ delta: { content: delta }, logprobs, finish_reason: null });
        } else {
          const logprobs = lp === undefined ? null : completionLogprobs([lp], offset);
          piece = chunk({ text: delta, logprobs, finish_reason: null, stop_reason: null }, { usage: null });
        }
        gate.write(() => res.write(piece), index + 1);
      },
      onFinish(result) {
        context.onEnd?.(result);
        if (ended) return;
        ended = true;
        if (result.reason === "abort") return; // the client left, or a fault ended the stream
        gate.write(() => finishResponse(result));
      },
    },
  );

  /** vLLM's in-band error event then [DONE] (or a 500 for a non-streaming request). */
  function failMidStream() {
    ended = true;
    handle.abort();
    const error = new VllmError(500, "Injected failure after the stream began");
    gate.write(() => {
      if (!stream) return sendError(res, error);
      if (responses !== undefined)
        return res.end(responses.failed("internal_server_error", error.message, text));
      res.write(`data: ${JSON.stringify(error.toJson())}\n\n`);
      res.end("data: [DONE]\n\n");
    });
  }

  /** Cuts the connection once what was written has been flushed: no finish chunk, no [DONE]. */
  function drop() {
    ended = true;
    handle.abort();
    gate.write(() => (res.socket ? res.socket.end() : res.destroy()));
  }

  function finishResponse(result: SequenceResult) {
    const usage = {
      prompt_tokens: result.promptTokens,
      total_tokens: result.promptTokens + result.completionTokens,
      completion_tokens: result.completionTokens,
      prompt_tokens_details: { cached_tokens: result.cachedTokens },
    };
    const stopReason = plan.stopReason ?? null;
    // A tool call that ran to its end finishes with "tool_calls", as vLLM's tool parsers report it.
    const finishReason = toolCall !== undefined && result.reason === "stop" ? "tool_calls" : result.reason;
    const generated = prepared.logprobs?.slice(0, result.completionTokens);
    if (responses !== undefined) {
      const finish = {
        finishReason: result.reason,
        usage: {
          promptTokens: result.promptTokens,
          completionTokens: result.completionTokens,
          cachedTokens: result.cachedTokens,
        },
      };
      if (stream) res.end(responses.closing(text, finish));
      else sendJson(res, 200, responses.body(text, finish));
      return;
    }
    if (!stream) {
      const logprobs =
        generated === undefined
          ? null
          : chat
            ? { content: generated.map(chatLogprob) }
            : completionLogprobs(generated, 0);
      const choice = chat
        ? {
            index: 0,
            message:
              toolCall !== undefined
                ? {
                    role: "assistant",
                    content: null,
                    tool_calls: [
                      {
                        id: toolCall.id,
                        type: "function",
                        function: { name: toolCall.name, arguments: text },
                      },
                    ],
                  }
                : { role: "assistant", content: text, tool_calls: [] },
            logprobs,
            finish_reason: finishReason,
            stop_reason: stopReason,
          }
        : { index: 0, text, logprobs, finish_reason: finishReason, stop_reason: stopReason };
      sendJson(res, 200, {
        id,
        object: chat ? "chat.completion" : "text_completion",
        created: createdAt,
        model,
        choices: [choice],
        usage,
      });
      return;
    }
    res.write(
      chat
        ? chunk({
            delta: { content: "" },
            logprobs: null,
            finish_reason: finishReason,
            stop_reason: stopReason,
          })
        : chunk(
            { text: "", logprobs: null, finish_reason: finishReason, stop_reason: stopReason },
            { usage: null },
          ),
    );
    if (prepared.includeUsage) res.write(`data: ${JSON.stringify({ ...base, choices: [], usage })}\n\n`);
    res.end("data: [DONE]\n\n");
  }

  // A client that goes away aborts the sequence at once and frees its KV blocks.
  res.on("close", () => {
    gate.cancel();
    if (!res.writableFinished) handle.abort();
  });
  req.on("error", () => handle.abort());
}

/** Milliseconds since the epoch with sub-millisecond precision, comparable across processes. */
export function wallClock(): number {
  return performance.timeOrigin + performance.now();
}
