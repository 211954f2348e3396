/**
 * What an OpenAI client sends: the bodies of POST /v1/chat/completions and /v1/completions, validated
 * with zod and turned into the gateway's one InferenceRequest. The fields the gateway interprets are
 * checked here (types; ranges are the pipeline's validation); every other field is passed through to
 * vLLM as it is.
 */
import { z } from "zod";
import type { GatewayConfig } from "../../config/gateway-config.js";
import { invalidRequest } from "../../errors/gateway-error.js";
import type { ChatTurn, InferenceRequest, SamplingParams } from "../../request/inference-request.js";
import { bearerOf } from "../../tenants/admission.js";
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

function describe(error: z.ZodError): string {
  return error.issues
    .slice(0, 3)
    .map((i) => `${i.path.length > 0 ? i.path.join(".") : "body"}: ${i.message}`)
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
  const passthrough = Object.fromEntries(Object.entries(body).filter(([k]) => !INTERPRETED.has(k)));
  const common = {
    requestId,
    protocol: "openai" as const,
    model: b.model,
    sampling: s,
    affinityKey: header(c.sessionHeader) || (b.user ?? ""),
    version: header(c.versionHeader),
    priority: "standard" as const,
    passthrough,
    signal,
    credential: bearerOf(header("authorization")),
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
