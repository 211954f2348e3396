/**
 * The first half of serving a completion: a request body becomes what the engine runs. The body is parsed
 * and validated as vLLM does (openai-request.ts), the prompt rendered through the chat template and
 * tokenized, the context length checked, and the output planned (which tokens, where it stops). Every
 * failure is a VllmError with vLLM's status and wording; nothing here touches the engine or the socket.
 */
import type { EngineOptions } from "../engine/engine-options.js";
import { renderChatTemplate } from "../text/chat-template.js";
import { planLogprobs, type TokenLogprob } from "../text/logprobs.js";
import { type OutputPlan, planOutput } from "../text/output-plan.js";
import { pieceId, tokenize } from "../text/tokenizer.js";
import { chooseTool, type PlannedToolCall, planToolCall } from "../text/tool-calls.js";
import {
  type ChatCompletionRequest,
  type CompletionRequest,
  chatCompletionRequest,
  completionRequest,
  describeZodError,
  messageText,
} from "./openai-request.js";
import { VllmError } from "./vllm-error.js";

/** A validated completion, ready for the engine. */
export interface PreparedCompletion {
  readonly chat: boolean;
  readonly promptTokens: number[];
  readonly plan: OutputPlan;
  readonly stream: boolean;
  readonly includeUsage: boolean;
  /**
   * vLLM's `stream_options.continuous_usage_stats` (with include_usage): every chunk carries the usage so
   * far (prompt tokens, completion tokens to that chunk).
   */
  readonly continuousUsage: boolean;
  /** Set when the model calls a tool: the plan's tokens are then the call's arguments. */
  readonly toolCall?: PlannedToolCall;
  /** Log probabilities of each output token, when the request asked for them. */
  readonly logprobs?: readonly TokenLogprob[];
  /** The LoRA adapter the request named as its model; undefined for the base model. */
  readonly lora?: string;
}

/**
 * Parses and validates a body for `model`, tokenizes the prompt and plans the output; throws VllmError
 * (400 for bad input or a context too long, 404 for another model's name). A loaded LoRA adapter's name
 * (`adapters`) is a model name too: the request runs with that adapter.
 */
export function prepareCompletion(
  bodyText: string,
  chat: boolean,
  model: string,
  engine: Pick<EngineOptions, "maxModelLen" | "meanOutputTokens">,
  adapters: { has(name: string): boolean } = new Set(),
): PreparedCompletion {
  let json: unknown;
  try {
    json = JSON.parse(bodyText);
  } catch (err) {
    throw new VllmError(400, `Invalid JSON body: ${(err as Error).message}`);
  }
  let body: ChatCompletionRequest | CompletionRequest;
  let promptTokens: number[];
  let requested: number | null | undefined;
  if (chat) {
    const parsed = chatCompletionRequest.safeParse(json);
    if (!parsed.success) throw new VllmError(400, describeZodError(parsed.error));
    body = parsed.data;
    const messages = parsed.data.messages.map((m) => ({ role: m.role, content: messageText(m.content) }));
    promptTokens = tokenize(renderChatTemplate(messages));
    requested = parsed.data.max_completion_tokens ?? parsed.data.max_tokens;
  } else {
    const parsed = completionRequest.safeParse(json);
    if (!parsed.success) throw new VllmError(400, describeZodError(parsed.error));
    body = parsed.data;
    const prompt = parsed.data.prompt;
    if (typeof prompt === "string") promptTokens = tokenize(prompt);
    else if (typeof prompt[0] === "string") promptTokens = tokenize(prompt[0]);
    else promptTokens = prompt as number[];
    requested = parsed.data.max_tokens;
  }
  const lora = typeof body.model === "string" && adapters.has(body.model) ? body.model : undefined;
  if (body.model !== undefined && body.model !== null && body.model !== model && lora === undefined) {
    throw new VllmError(404, `The model \`${body.model}\` does not exist.`);
  }
  if (promptTokens.length === 0) throw new VllmError(400, "The prompt is empty.");
  const maxModelLen = engine.maxModelLen;
  if (promptTokens.length >= maxModelLen || promptTokens.length + (requested ?? 0) > maxModelLen) {
    throw new VllmError(
      400,
      `This model's maximum context length is ${maxModelLen} tokens. However, you requested ` +
        `${promptTokens.length + (requested ?? 0)} tokens (${promptTokens.length} in the messages, ` +
        `${requested ?? 0} in the completion). Please reduce the length of the messages or completion.`,
    );
  }
  const stop =
    body.stop === undefined || body.stop === null
      ? []
      : typeof body.stop === "string"
        ? [body.stop]
        : body.stop;
  const seed = mixSeed(body.seed ?? Math.floor(Math.random() * 2 ** 32), promptTokens);
  const maxTokens = requested ?? maxModelLen - promptTokens.length;
  let plan = planOutput({
    maxTokens,
    seed,
    stop: stop.filter((s) => s.length > 0),
    ignoreEos: body.ignore_eos ?? false,
    meanOutputTokens: engine.meanOutputTokens,
  });
  let toolCall: PlannedToolCall | undefined;
  if (chat) {
    const c = body as ChatCompletionRequest;
    const tools = (c.tools ?? []).map((t) => ({ name: t.function.name, parameters: t.function.parameters }));
    const lastUser = [...c.messages].reverse().find((m) => m.role === "user");
    const chosen = chooseTool(tools, c.tool_choice, messageText(lastUser?.content));
    if (typeof c.tool_choice === "object" && c.tool_choice !== null && chosen === undefined) {
      throw new VllmError(
        400,
        `tool_choice names function "${c.tool_choice.function.name}", not one of the tools`,
      );
    }
    if (chosen !== undefined) {
      toolCall = planToolCall(chosen, seed);
      const pieces = toolCall.argumentPieces.slice(0, maxTokens);
      plan = {
        deltas: pieces,
        tokenIds: pieces.map(pieceId),
        finishReason: pieces.length < toolCall.argumentPieces.length ? "length" : "stop",
        stopReason: undefined,
      };
    }
  }
  const top = chat
    ? (body as ChatCompletionRequest).logprobs
      ? ((body as ChatCompletionRequest).top_logprobs ?? 0)
      : undefined
    : ((body as CompletionRequest).logprobs ?? undefined);
  return {
    chat,
    promptTokens,
    plan,
    stream: body.stream ?? false,
    includeUsage: body.stream_options?.include_usage ?? false,
    continuousUsage:
      (body.stream_options?.include_usage ?? false) && (body.stream_options?.continuous_usage_stats ?? false),
    ...(toolCall !== undefined ? { toolCall } : {}),
    ...(top !== undefined && top !== null
      ? { logprobs: planLogprobs(plan.deltas, Math.max(1, top), seed) }
      : {}),
    ...(lora !== undefined ? { lora } : {}),
  };
}

/** Mixes the request's seed with its prompt so that different prompts with one seed differ, as with vLLM. */
function mixSeed(seed: number, promptTokens: readonly number[]): number {
  let h = (seed ^ 0x9e3779b9) >>> 0;
  for (const t of promptTokens) h = Math.imul(h ^ t, 0x01000193) >>> 0;
  return h;
}
