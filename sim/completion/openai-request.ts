/**
 * The request bodies of vLLM's OpenAI-compatible endpoints, validated with zod. Fields the simulator does
 * not model (response_format, min_p, ...) are accepted and ignored, as vLLM accepts fields it does not act
 * on; fields it does model (sampling, stop, tools and tool_choice, logprobs) are checked for type and
 * range, and a violation names the field.
 */
import { z } from "zod";

const nullable = <T extends z.ZodType>(schema: T) => schema.nullish();

const sampling = {
  model: nullable(z.string()),
  max_tokens: nullable(z.number().int().min(1)),
  temperature: nullable(z.number().min(0).max(2)),
  top_p: nullable(z.number().gt(0).max(1)),
  top_k: nullable(z.number().int().min(-1)),
  presence_penalty: nullable(z.number().min(-2).max(2)),
  frequency_penalty: nullable(z.number().min(-2).max(2)),
  seed: nullable(z.number().int()),
  n: nullable(z.literal(1, { error: "only n=1 is supported" })),
  stream: nullable(z.boolean()),
  stream_options: nullable(
    z.looseObject({ include_usage: nullable(z.boolean()), continuous_usage_stats: nullable(z.boolean()) }),
  ),
  stop: nullable(z.union([z.string(), z.array(z.string()).max(64)])),
  ignore_eos: nullable(z.boolean()),
};

const textPart = z.looseObject({ type: z.literal("text"), text: z.string() });

/** A function the model may call (OpenAI's tools, as vLLM takes them). */
const tool = z.looseObject({
  type: z.literal("function"),
  function: z.looseObject({
    name: z.string().min(1).max(64),
    description: nullable(z.string()),
    parameters: nullable(z.record(z.string(), z.unknown())),
  }),
});

const toolChoice = z.union([
  z.enum(["none", "auto", "required"]),
  z.looseObject({ type: z.literal("function"), function: z.looseObject({ name: z.string() }) }),
]);

const chatMessage = z.looseObject({
  role: z.enum(["system", "user", "assistant", "tool", "developer"]),
  content: nullable(z.union([z.string(), z.array(textPart)])),
  name: nullable(z.string()),
});

/** POST /v1/chat/completions */
export const chatCompletionRequest = z.looseObject({
  ...sampling,
  messages: z.array(chatMessage).min(1, { error: "messages must not be empty" }),
  max_completion_tokens: nullable(z.number().int().min(1)),
  tools: nullable(z.array(tool).max(128)),
  tool_choice: nullable(toolChoice),
  logprobs: nullable(z.boolean()),
  top_logprobs: nullable(z.number().int().min(0).max(20)),
});

/** POST /v1/completions */
export const completionRequest = z.looseObject({
  ...sampling,
  /** The number of top alternatives per token (the completions API's logprobs is a count). */
  logprobs: nullable(z.number().int().min(0).max(20)),
  prompt: z.union([
    z.string(),
    z.array(z.string()).length(1, { error: "only one prompt per request is supported" }),
    z.array(z.number().int().nonnegative()).min(1),
  ]),
});

export type ChatCompletionRequest = z.infer<typeof chatCompletionRequest>;
export type CompletionRequest = z.infer<typeof completionRequest>;

/** Flattens a chat message's content (string or text parts) to text. */
export function messageText(content: ChatCompletionRequest["messages"][number]["content"]): string {
  if (content === null || content === undefined) return "";
  if (typeof content === "string") return content;
  return content.map((p) => p.text).join("");
}

/** One line per problem: "messages.0.role: Invalid option: expected one of ...". */
export function describeZodError(error: z.ZodError): string {
  return error.issues
    .slice(0, 5)
    .map((issue) => `${issue.path.length > 0 ? issue.path.join(".") : "body"}: ${issue.message}`)
    .join("; ");
}
