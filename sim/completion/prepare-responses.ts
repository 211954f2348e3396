/**
 * POST /v1/responses as vLLM serves it (its OpenAI Responses API): the request's instructions and input
 * become a chat conversation that the engine runs like any chat completion; the answer is rendered as a
 * Response object or the Responses event stream (common/openai/responses-events.ts). The simulator, like
 * vLLM without a response store, keeps nothing: previous_response_id is refused.
 */
import { z } from "zod";
import type { ResponseEcho } from "../../common/openai/responses-events.js";
import type { EngineOptions } from "../engine/engine-options.js";
import { type PreparedCompletion, prepareCompletion } from "./prepare-completion.js";
import { VllmError } from "./vllm-error.js";

const part = z.looseObject({ type: z.enum(["input_text", "output_text"]), text: z.string() });
const responsesRequest = z.looseObject({
  model: z.string().nullish(),
  input: z.union([
    z.string(),
    z
      .array(
        z.looseObject({
          type: z.literal("message").nullish(),
          role: z.enum(["user", "system", "developer", "assistant"]),
          content: z.union([z.string(), z.array(part)]),
        }),
      )
      .min(1),
  ]),
  instructions: z.string().nullish(),
  max_output_tokens: z.number().int().positive().nullish(),
  temperature: z.number().nullish(),
  top_p: z.number().nullish(),
  stream: z.boolean().nullish(),
  metadata: z.record(z.string(), z.string()).nullish(),
  previous_response_id: z.string().nullish(),
});

export interface PreparedResponses {
  readonly completion: PreparedCompletion;
  readonly echo: ResponseEcho;
}

export function prepareResponses(
  bodyText: string,
  model: string,
  engine: Pick<EngineOptions, "maxModelLen" | "meanOutputTokens">,
  adapters: { has(name: string): boolean } = new Set(),
): PreparedResponses {
  let json: unknown;
  try {
    json = JSON.parse(bodyText);
  } catch (err) {
    throw new VllmError(400, `Invalid JSON body: ${(err as Error).message}`);
  }
  const parsed = responsesRequest.safeParse(json);
  if (!parsed.success)
    throw new VllmError(400, parsed.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`).join("; "));
  const b = parsed.data;
  if (b.previous_response_id != null)
    throw new VllmError(404, `Response with id '${b.previous_response_id.slice(0, 64)}' not found.`);
  const turns =
    typeof b.input === "string"
      ? [{ role: "user", content: b.input }]
      : b.input.map((m) => ({
          role: m.role,
          content: typeof m.content === "string" ? m.content : m.content.map((p) => p.text).join(""),
        }));
  const chat = {
    model: b.model ?? model,
    messages: b.instructions ? [{ role: "system", content: b.instructions }, ...turns] : turns,
    stream: b.stream ?? false,
    ...(b.max_output_tokens != null ? { max_tokens: b.max_output_tokens } : {}),
    ...(b.temperature != null ? { temperature: b.temperature } : {}),
    ...(b.top_p != null ? { top_p: b.top_p } : {}),
  };
  return {
    completion: prepareCompletion(JSON.stringify(chat), true, model, engine, adapters),
    echo: {
      instructions: b.instructions ?? null,
      maxOutputTokens: b.max_output_tokens ?? null,
      temperature: b.temperature ?? null,
      topP: b.top_p ?? null,
      metadata: b.metadata ?? {},
    },
  };
}
