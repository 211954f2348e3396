/**
 * What an OpenAI client sends: the bodies of POST /v1/chat/completions and /v1/completions, validated
 * with zod and turned into the gateway's one InferenceRequest. The fields the gateway interprets are
 * checked here (types; ranges are the pipeline's validation); other fields are passed to vLLM as they are
 * only if they are on an allow-list (PASSED_THROUGH), a few OpenAI platform fields are accepted and not
 * forwarded (DROPPED), and the rest is refused with 400 naming the field: nothing reaches a replica by
 * accident.
 */
import { z } from "zod";
import type { ResponseEcho } from "../../../common/openai/responses-events.js";
import type { GatewayConfig } from "../../config/gateway-config.js";
import { invalidRequest } from "../../errors/gateway-error.js";
import type { ChatTurn, InferenceRequest, SamplingParams } from "../../request/inference-request.js";
import { priorityHeader } from "../../request/validate-request.js";
import { bearerOf } from "../../tenants/admission.js";
import { traceHeadersOf } from "../../tracing/request-tracing.js";
import type { HttpRequest } from "./openai-response.js";

const opt = <T extends z.ZodType>(schema: T) => schema.nullish();

/** The fields the gateway interprets; every other field is passed through to vLLM. */
const sampling = {
  model: z.string().min(1, { error: "model is required" }),
  max_tokens: opt(z.number().int().positive()),
  temperature: opt(z.number()),
  top_p: opt(z.number()),
  top_k: opt(z.number().int()),
  seed: opt(z.number().int().min(-Number.MAX_SAFE_INTEGER).max(Number.MAX_SAFE_INTEGER)),
  presence_penalty: opt(z.number()),
  frequency_penalty: opt(z.number()),
  stop: opt(z.union([z.string(), z.array(z.string())])),
  stream: opt(z.boolean()),
  stream_options: opt(z.looseObject({ include_usage: opt(z.boolean()) })),
  n: opt(z.literal(1, { error: "only n=1 is supported" })),
  user: opt(z.string().max(256)),
};

const textPart = z.looseObject({ type: z.literal("text"), text: z.string() });

const chatSchema = z.looseObject({
  ...sampling,
  max_completion_tokens: opt(z.number().int().positive()),
  messages: z
    .array(
      z.looseObject({
        role: z.enum(["system", "user", "assistant", "tool", "developer"]),
        content: opt(z.union([z.string(), z.array(textPart)])),
        name: opt(z.string()),
      }),
    )
    .min(1, { error: "messages must not be empty" }),
});

const completionSchema = z.looseObject({
  ...sampling,
  prompt: z.union([
    z.string(),
    z.array(z.string()).length(1, { error: "only one prompt per request is supported" }),
  ]),
});

const INTERPRETED = new Set([...Object.keys(chatSchema.shape), ...Object.keys(completionSchema.shape)]);

/**
 * Request fields passed to vLLM as the client sent them: OpenAI's (tools, logprobs, response_format, ...)
 * and vLLM's sampling and structured-output extensions. The README lists them.
 */
export const PASSED_THROUGH: ReadonlySet<string> = new Set([
  // OpenAI
  "logit_bias",
  "logprobs",
  "top_logprobs",
  "response_format",
  "tools",
  "tool_choice",
  "parallel_tool_calls",
  "reasoning_effort",
  "echo",
  "suffix",
  // vLLM sampling
  "min_p",
  "repetition_penalty",
  "length_penalty",
  "min_tokens",
  "stop_token_ids",
  "include_stop_str_in_output",
  "ignore_eos",
  "skip_special_tokens",
  "spaces_between_special_tokens",
  "truncate_prompt_tokens",
  "allowed_token_ids",
  "bad_words",
  "prompt_logprobs",
  "return_tokens_as_token_ids",
  // vLLM chat and structured outputs
  "add_generation_prompt",
  "continue_final_message",
  "add_special_tokens",
  "documents",
  "chat_template_kwargs",
  "guided_json",
  "guided_regex",
  "guided_choice",
  "guided_grammar",
  "guided_whitespace_pattern",
  "guided_decoding_backend",
  "structural_tag",
  "structured_outputs",
  "cache_salt",
]);

/** OpenAI platform fields that vLLM does not take: accepted (OpenAI's SDKs send them), not forwarded. */
export const DROPPED: ReadonlySet<string> = new Set(["store", "metadata", "service_tier"]);

/** vLLM fields a client may not set through the gateway, and why. */
export const REFUSED: Readonly<Record<string, string>> = {
  priority: "the gateway sets the replica's scheduling priority from the request's criticality",
  request_id: "the gateway names every request (x-request-id)",
  best_of: "only one sequence per request is supported",
  use_beam_search: "only one sequence per request is supported",
  kv_transfer_params: "disaggregated-serving internals are set by the serving stack, not by clients",
  chat_template: "a client-supplied template would run on the replica",
  logits_processors: "a client-supplied processor would run on the replica",
  vllm_xargs: "replica extensions are not exposed",
  mm_processor_kwargs: "multimodal input is not supported",
};

function describe(error: z.ZodError, root?: string): string {
  return error.issues
    .slice(0, 3)
    .map((i) => {
      const path = [...(root !== undefined ? [root] : []), ...i.path].join(".");
      return `${path !== "" ? path : "body"}: ${i.message}`;
    })
    .join("; ");
}

/** Deepest nesting of arrays and objects accepted in a body; vLLM's requests need a handful of levels. */
export const MAX_JSON_DEPTH = 64;

/** The nesting depth of JSON text, read in one pass outside strings (before parsing it). */
function jsonDepth(text: string): number {
  let depth = 0;
  let max = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 92 /* \\ */) i++;
      else if (c === 34 /* " */) inString = false;
    } else if (c === 34) inString = true;
    else if (c === 123 /* { */ || c === 91 /* [ */) {
      depth++;
      if (depth > max) max = depth;
    } else if (c === 125 /* } */ || c === 93 /* ] */) depth--;
  }
  return max;
}

/** Parses a request body that must be a JSON object; INVALID_ARGUMENT otherwise, or when nested too deep. */
export function parseJsonObject(text: string): Record<string, unknown> {
  if (jsonDepth(text) > MAX_JSON_DEPTH)
    throw invalidRequest(`the request body is nested deeper than ${MAX_JSON_DEPTH} levels`);
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    throw invalidRequest("the request body is not valid JSON");
  }
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    throw invalidRequest("the request body must be a JSON object");
  }
  return body as Record<string, unknown>;
}

/** An OpenAI request as the pipeline sees it, and how the client wants the answer. */
export interface OpenAiRequest {
  readonly request: InferenceRequest;
  readonly stream: boolean;
  readonly includeUsage: boolean;
}

export function toInferenceRequest(
  req: HttpRequest,
  body: Record<string, unknown>,
  chat: boolean,
  requestId: string,
  signal: AbortSignal,
  c: GatewayConfig,
  deadlineAt?: number,
): OpenAiRequest {
  const parsed = (chat ? chatSchema : completionSchema).safeParse(body);
  if (!parsed.success) throw invalidRequest(describe(parsed.error));
  const b = parsed.data as z.infer<typeof chatSchema> & z.infer<typeof completionSchema>;
  const header = (name: string) => {
    const v = req.headers[name];
    return (Array.isArray(v) ? v[0] : v) ?? "";
  };
  const stop = b.stop === undefined || b.stop === null ? [] : typeof b.stop === "string" ? [b.stop] : b.stop;
  const maxTokens = (chat ? b.max_completion_tokens : undefined) ?? b.max_tokens ?? undefined;
  const s: SamplingParams = {
    stop,
    ...(maxTokens !== undefined ? { maxTokens } : {}),
    ...(b.temperature != null ? { temperature: b.temperature } : {}),
    ...(b.top_p != null ? { topP: b.top_p } : {}),
    ...(b.top_k != null ? { topK: b.top_k } : {}),
    ...(b.seed != null ? { seed: b.seed } : {}),
    ...(b.presence_penalty != null ? { presencePenalty: b.presence_penalty } : {}),
    ...(b.frequency_penalty != null ? { frequencyPenalty: b.frequency_penalty } : {}),
  };
  const passthrough: Record<string, unknown> = {};
  const unknown: string[] = [];
  for (const [k, v] of Object.entries(body)) {
    if (INTERPRETED.has(k) || DROPPED.has(k)) continue;
    const refused = REFUSED[k];
    if (refused !== undefined) throw invalidRequest(`${k} is not accepted: ${refused}`);
    if (PASSED_THROUGH.has(k)) passthrough[k] = v;
    else unknown.push(k);
  }
  if (unknown.length > 0) {
    const named = unknown
      .slice(0, 5)
      .map((k) => JSON.stringify(k.slice(0, 64)))
      .join(", ");
    throw invalidRequest(
      `unknown field${unknown.length > 1 ? "s" : ""} ${named}: see the gateway's README for the fields it takes`,
    );
  }
  const common = {
    requestId,
    protocol: "openai" as const,
    model: b.model,
    sampling: s,
    affinityKey: header(c.sessionHeader) || (b.user ?? ""),
    version: header(c.versionHeader),
    priority: priorityHeader(header(c.priorityHeader)),
    deadlineAt,
    passthrough,
    signal,
    credential: bearerOf(header("authorization")),
    traceHeaders: traceHeadersOf(header),
  };
  const request: InferenceRequest = chat
    ? {
        ...common,
        messages: b.messages.map(
          (m): ChatTurn => ({
            role: m.role,
            content:
              typeof m.content === "string" ? m.content : (m.content ?? []).map((p) => p.text).join(""),
            ...(m.name ? { name: m.name } : {}),
          }),
        ),
      }
    : { ...common, prompt: typeof b.prompt === "string" ? b.prompt : (b.prompt[0] as string) };
  return { request, stream: b.stream ?? false, includeUsage: b.stream_options?.include_usage ?? false };
}

const embeddingsSchema = z.strictObject({
  model: z.string().min(1, { error: "model is required" }),
  input: z.union([z.string(), z.array(z.string())], {
    error: "input must be a string or a list of strings (token-id inputs are not supported)",
  }),
  encoding_format: opt(z.enum(["float", "base64"])),
  dimensions: opt(z.number().int().positive()),
  user: opt(z.string().max(256)),
  // vLLM's: cut each input to its last N tokens (-1: to the context length).
  truncate_prompt_tokens: opt(z.number().int().min(-1)),
});

/** A POST /v1/embeddings request as the pipeline sees it, and how the client wants the vectors. */
export interface OpenAiEmbeddingsRequest {
  readonly request: InferenceRequest;
  readonly base64: boolean;
}

/**
 * The body of POST /v1/embeddings: OpenAI's fields and vLLM's truncate_prompt_tokens; any other field is
 * refused with 400 naming it. `encoding_format` defaults to float, as OpenAI's API does.
 */
export function toEmbeddingsRequest(
  req: HttpRequest,
  body: Record<string, unknown>,
  requestId: string,
  signal: AbortSignal,
  c: GatewayConfig,
  deadlineAt?: number,
): OpenAiEmbeddingsRequest {
  const parsed = embeddingsSchema.safeParse(body);
  if (!parsed.success) throw invalidRequest(describe(parsed.error));
  const b = parsed.data;
  const header = (name: string) => {
    const v = req.headers[name];
    return (Array.isArray(v) ? v[0] : v) ?? "";
  };
  const request: InferenceRequest = {
    requestId,
    protocol: "openai",
    model: b.model,
    embed: {
      inputs: typeof b.input === "string" ? [b.input] : b.input,
      ...(b.dimensions != null ? { dimensions: b.dimensions } : {}),
    },
    sampling: { stop: [] },
    affinityKey: header(c.sessionHeader) || (b.user ?? ""),
    version: header(c.versionHeader),
    priority: priorityHeader(header(c.priorityHeader)),
    deadlineAt,
    passthrough: b.truncate_prompt_tokens != null ? { truncate_prompt_tokens: b.truncate_prompt_tokens } : {},
    signal,
    credential: bearerOf(header("authorization")),
    traceHeaders: traceHeadersOf(header),
  };
  return { request, base64: b.encoding_format === "base64" };
}

/**
 * A Responses API input item: a message whose content is text or text parts (input_text; output_text for
 * the assistant's earlier turns). Parsed on its own, after the body's other fields, so that its errors
 * name the part at fault rather than "invalid input" for the whole union.
 */
const responseMessages = z
  .array(
    z.looseObject({
      type: opt(z.literal("message", { error: "input items must be messages" })),
      role: z.enum(["user", "system", "developer", "assistant"]),
      // A string content is read as one input_text part (see toResponsesRequest).
      content: z.array(
        z.looseObject({
          type: z.enum(["input_text", "output_text"], {
            error: "content parts must be input_text or output_text (images and files are not supported)",
          }),
          text: z.string(),
        }),
      ),
    }),
  )
  .min(1, { error: "input must not be empty" });

const responsesSchema = z.strictObject({
  model: z.string().min(1, { error: "model is required" }),
  input: z.unknown().refine((v) => v !== undefined, { error: "input is required" }),
  instructions: opt(z.string()),
  max_output_tokens: opt(z.number().int().positive()),
  temperature: opt(z.number()),
  top_p: opt(z.number()),
  stream: opt(z.boolean()),
  user: opt(z.string().max(256)),
  // Echoed in the answer, as OpenAI does; at most 16 pairs of short strings.
  metadata: opt(z.record(z.string().max(64), z.string().max(512)).refine((m) => Object.keys(m).length <= 16)),
  // kinfer keeps no responses: `store` is accepted and nothing is stored (previous_response_id is refused).
  store: opt(z.boolean()),
  previous_response_id: opt(
    z.never({
      error: "previous_response_id is not supported: kinfer stores no responses; send the turns in input",
    }),
  ),
  tools: opt(z.array(z.unknown()).max(0, { error: "tools are not supported on /v1/responses" })),
  tool_choice: opt(z.literal("none")),
  // Sent by SDKs with their default values, which are what kinfer does anyway: accepted and not forwarded.
  text: opt(
    z.strictObject({
      format: opt(z.strictObject({ type: z.literal("text", { error: "only text output is supported" }) })),
    }),
  ),
  parallel_tool_calls: opt(z.boolean()),
  truncation: opt(z.literal("disabled", { error: "truncation must be disabled (nothing is truncated)" })),
  include: opt(z.array(z.string()).max(0, { error: "include is not supported" })),
  service_tier: opt(z.string().max(64)),
});

/** A POST /v1/responses request as the pipeline sees it (a chat), and what its answer echoes. */
export interface OpenAiResponsesRequest {
  readonly request: InferenceRequest;
  readonly stream: boolean;
  readonly echo: ResponseEcho;
}

/**
 * The body of POST /v1/responses (OpenAI's Responses API, as vLLM serves it): text input, as a string or
 * messages, with instructions as a system turn; relayed to the replica as a chat completion. Tools,
 * images and stored conversations (previous_response_id) are refused with 400 naming them.
 */
export function toResponsesRequest(
  req: HttpRequest,
  body: Record<string, unknown>,
  requestId: string,
  signal: AbortSignal,
  c: GatewayConfig,
  deadlineAt?: number,
): OpenAiResponsesRequest {
  const parsed = responsesSchema.safeParse(body);
  if (!parsed.success) throw invalidRequest(describe(parsed.error));
  const b = parsed.data;
  const header = (name: string) => {
    const v = req.headers[name];
    return (Array.isArray(v) ? v[0] : v) ?? "";
  };
  const turns: ChatTurn[] = [];
  if (typeof b.input === "string") turns.push({ role: "user", content: b.input });
  else {
    const asParts = (item: unknown) =>
      typeof item === "object" && item !== null && typeof (item as { content?: unknown }).content === "string"
        ? { ...item, content: [{ type: "input_text", text: (item as { content: string }).content }] }
        : item;
    const items = responseMessages.safeParse(Array.isArray(b.input) ? b.input.map(asParts) : b.input);
    if (!items.success) throw invalidRequest(describe(items.error, "input"));
    for (const item of items.data)
      turns.push({ role: item.role, content: item.content.map((p) => p.text).join("") });
  }
  const messages: ChatTurn[] =
    b.instructions != null && b.instructions !== ""
      ? [{ role: "system", content: b.instructions }, ...turns]
      : turns;
  const request: InferenceRequest = {
    requestId,
    protocol: "openai",
    model: b.model,
    messages,
    sampling: {
      stop: [],
      ...(b.max_output_tokens != null ? { maxTokens: b.max_output_tokens } : {}),
      ...(b.temperature != null ? { temperature: b.temperature } : {}),
      ...(b.top_p != null ? { topP: b.top_p } : {}),
    },
    affinityKey: header(c.sessionHeader) || (b.user ?? ""),
    version: header(c.versionHeader),
    priority: priorityHeader(header(c.priorityHeader)),
    deadlineAt,
    passthrough: {},
    signal,
    credential: bearerOf(header("authorization")),
    traceHeaders: traceHeadersOf(header),
  };
  return {
    request,
    stream: b.stream ?? false,
    echo: {
      instructions: b.instructions ?? null,
      maxOutputTokens: b.max_output_tokens ?? null,
      temperature: b.temperature ?? null,
      topP: b.top_p ?? null,
      metadata: b.metadata ?? {},
    },
  };
}
