/**
 * The answers of POST /v1/responses (OpenAI's Responses API) in the shapes vLLM and OpenAI send, shared by
 * the gateway (which relays the answer as a chat completion and renders it here) and the simulator (which
 * serves /v1/responses as vLLM does): one
 * Response object, or a stream of typed events, each an SSE `event: <type>` line and its JSON, numbered
 * by `sequence_number`:
 *
 *   response.created, response.in_progress, response.output_item.added, response.content_part.added,
 *   response.output_text.delta (one per relayed chunk), response.output_text.done,
 *   response.content_part.done, response.output_item.done, then response.completed, or
 *   response.incomplete when max_output_tokens cut the answer, or response.failed after an error.
 *
 * The answer is one assistant message with one output_text part (the relayed chat's text).
 */

/** How the answer ended, as the relay or the engine reports it. */
export interface ResponseFinish {
  /** "length": max_output_tokens cut the answer (an incomplete response). */
  readonly finishReason: string;
  readonly usage: {
    readonly promptTokens: number;
    readonly completionTokens: number;
    readonly cachedTokens: number;
  };
}

/** What the Response object echoes of its request. */
export interface ResponseEcho {
  readonly instructions: string | null;
  readonly maxOutputTokens: number | null;
  readonly temperature: number | null;
  readonly topP: number | null;
  readonly metadata: Readonly<Record<string, string>>;
}

export interface ResponsesRenderer {
  /** The Response object without a stream. */
  body(text: string, finish: ResponseFinish): unknown;
  /** The first events of a stream, through the empty output_text part. */
  opening(): string;
  delta(text: string): string;
  /** The closing events: the text's, the part's and the item's done, then completed or incomplete. */
  closing(text: string, finish: ResponseFinish): string;
  /**
   * response.failed, after an error once the stream has begun (`code` as OpenAI's error bodies name it),
   * with the text streamed until then as an incomplete message.
   */
  failed(code: string, message: string, text: string): string;
}

export function responsesRenderer(
  requestId: string,
  model: string,
  createdAt: number,
  echo: ResponseEcho,
): ResponsesRenderer {
  const id = `resp_${requestId.replaceAll("-", "")}`;
  const itemId = `msg_${requestId.replaceAll("-", "")}`;
  let sequence = 0;
  const event = (type: string, fields: Record<string, unknown>) =>
    `event: ${type}\ndata: ${JSON.stringify({ type, sequence_number: sequence++, ...fields })}\n\n`;

  const message_ = (status: "in_progress" | "completed" | "incomplete", text?: string) => ({
    id: itemId,
    type: "message",
    role: "assistant",
    status,
    content: text === undefined ? [] : [part(text)],
  });
  const part = (text: string) => ({ type: "output_text", text, annotations: [], logprobs: [] });
  const response = (
    status: "in_progress" | "completed" | "incomplete" | "failed",
    output: unknown[],
    extra: Record<string, unknown> = {},
  ) => ({
    id,
    object: "response",
    created_at: createdAt,
    model,
    status,
    output,
    instructions: echo.instructions,
    max_output_tokens: echo.maxOutputTokens,
    temperature: echo.temperature,
    top_p: echo.topP,
    metadata: echo.metadata,
    tools: [],
    tool_choice: "none",
    parallel_tool_calls: false,
    text: { format: { type: "text" } },
    error: null,
    incomplete_details: null,
    usage: null,
    ...extra,
  });
  const finished = (text: string, f: ResponseFinish) => {
    const incomplete = f.finishReason === "length";
    return response(
      incomplete ? "incomplete" : "completed",
      [message_(incomplete ? "incomplete" : "completed", text)],
      {
        incomplete_details: incomplete ? { reason: "max_output_tokens" } : null,
        usage: {
          input_tokens: f.usage.promptTokens,
          input_tokens_details: { cached_tokens: f.usage.cachedTokens },
          output_tokens: f.usage.completionTokens,
          output_tokens_details: { reasoning_tokens: 0 },
          total_tokens: f.usage.promptTokens + f.usage.completionTokens,
        },
      },
    );
  };
  const at = { output_index: 0, item_id: itemId, content_index: 0 };

  return {
    body: finished,
    opening() {
      const started = response("in_progress", []);
      return (
        event("response.created", { response: started }) +
        event("response.in_progress", { response: started }) +
        event("response.output_item.added", { output_index: 0, item: message_("in_progress") }) +
        event("response.content_part.added", { ...at, part: part("") })
      );
    },
    delta: (text) => event("response.output_text.delta", { ...at, delta: text, logprobs: [] }),
    closing(text, f) {
      const done = finished(text, f);
      return (
        event("response.output_text.done", { ...at, text, logprobs: [] }) +
        event("response.content_part.done", { ...at, part: part(text) }) +
        event("response.output_item.done", { output_index: 0, item: done.output[0] }) +
        event(done.status === "incomplete" ? "response.incomplete" : "response.completed", { response: done })
      );
    },
    failed(code, message, text) {
      return event("response.failed", {
        response: response("failed", [message_("incomplete", text)], { error: { code, message } }),
      });
    },
  };
}
