/**
 * Tool calls as a model served by vLLM makes them: when a request offers tools, the simulated model calls
 * one if tool_choice requires it ("required", or a named function) or, with "auto", if the last user
 * message names one of the functions (a deterministic stand-in for the model's judgement). The call's
 * arguments are JSON built from the function's parameter schema with seeded values, and are streamed
 * token by token like any output, as vLLM's tool parsers stream `delta.tool_calls[].function.arguments`.
 */
import { createRng } from "../../common/random.js";
import { tokenizePieces } from "./tokenizer.js";

export interface ToolSpec {
  readonly name: string;
  readonly parameters?: Record<string, unknown> | null | undefined;
}

export type ToolChoice = "none" | "auto" | "required" | { readonly function: { readonly name: string } };

/** The call the model makes: which function, with what arguments (as the tokens that stream them). */
export interface PlannedToolCall {
  readonly id: string;
  readonly name: string;
  readonly argumentPieces: readonly string[];
}

/** The function to call, or undefined when the model answers in text. */
export function chooseTool(
  tools: readonly ToolSpec[],
  choice: ToolChoice | null | undefined,
  lastUserMessage: string,
): ToolSpec | undefined {
  if (tools.length === 0 || choice === "none") return undefined;
  if (typeof choice === "object" && choice !== null)
    return tools.find((t) => t.name === choice.function.name);
  if (choice === "required") return tools[0];
  return tools.find((t) => lastUserMessage.includes(t.name));
}

/** A seeded value for a JSON schema (properties of objects filled in, enums take their first value). */
function valueFor(schema: unknown, rng: () => number, depth: number): unknown {
  const s = (schema ?? {}) as { type?: unknown; enum?: unknown[]; properties?: Record<string, unknown> };
  if (Array.isArray(s.enum) && s.enum.length > 0) return s.enum[0];
  switch (s.type) {
    case "integer":
      return Math.floor(rng() * 100);
    case "number":
      return Math.round(rng() * 10_000) / 100;
    case "boolean":
      return rng() < 0.5;
    case "array":
      return [];
    case "object": {
      if (depth > 4) return {};
      const out: Record<string, unknown> = {};
      for (const [k, v] of Object.entries(s.properties ?? {})) out[k] = valueFor(v, rng, depth + 1);
      return out;
    }
    default:
      return ["kinfer", "paris", "tokyo", "celsius", "today"][Math.floor(rng() * 5)];
  }
}

/** Plans the call of `tool`: an id, and the argument JSON split into token-sized pieces. */
export function planToolCall(tool: ToolSpec, seed: number): PlannedToolCall {
  const rng = createRng(seed);
  const args = JSON.stringify(valueFor(tool.parameters ?? { type: "object" }, rng, 0) ?? {});
  const id = `chatcmpl-tool-${Math.floor(rng() * 2 ** 32)
    .toString(16)
    .padStart(8, "0")}`;
  return { id, name: tool.name, argumentPieces: tokenizePieces(args) };
}
