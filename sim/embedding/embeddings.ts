/**
 * POST /v1/embeddings as vLLM serves it for a pooling model: OpenAI's request (`input` a string, a list of
 * strings, a token list or a list of token lists; `encoding_format` "float" or "base64"; `dimensions`;
 * vLLM's `truncate_prompt_tokens`) and response (`{"object":"list","data":[{"object":"embedding","index",
 * "embedding"}],"model","usage":{"prompt_tokens","total_tokens"}}`), base64 being the little-endian
 * float32 bytes of the vector.
 *
 * The vectors are deterministic: each token id seeds a pseudo-random direction, and an input's embedding is
 * the normalised sum of its tokens' directions, so equal inputs get equal vectors and inputs that share
 * tokens point the same way (cosine similarity behaves as users expect of a real model). Every input
 * runs through the engine as a prefill (one sequence each, producing one token: the pooled output), so an
 * embedding takes engine time and KV blocks and shows in the replica's metrics as vLLM's do.
 *
 * (A vLLM server answers /v1/embeddings only when it runs an embedding model, `--runner pooling`; the
 * simulator answers it for any model, so that one simulated fleet serves both APIs.)
 */
import { z } from "zod";
import { describeZodError } from "../completion/openai-request.js";
import { VllmError } from "../completion/vllm-error.js";
import type { Engine, SequenceHandle } from "../engine/engine.js";
import { tokenize } from "../text/tokenizer.js";

/** The request, as vLLM validates it (unknown fields are accepted and ignored, as vLLM does). */
const embeddingRequest = z.looseObject({
  model: z.string().nullish(),
  input: z.union([
    z.string(),
    z.array(z.string()).min(1),
    z.array(z.number().int().nonnegative()).min(1),
    z.array(z.array(z.number().int().nonnegative()).min(1)).min(1),
  ]),
  encoding_format: z.enum(["float", "base64"]).default("float"),
  dimensions: z.number().int().positive().nullish(),
  truncate_prompt_tokens: z.number().int().min(-1).nullish(),
  user: z.string().nullish(),
});

/** A validated embeddings request: the token ids of each input, ready for the engine. */
export interface PreparedEmbeddings {
  readonly inputs: readonly number[][];
  readonly base64: boolean;
  readonly dimensions: number;
}

/**
 * Parses and validates a body for `model`; throws VllmError (400 for bad input, an input longer than the
 * context or dimensions the model does not have; 404 for another model's name).
 */
export function prepareEmbeddings(
  bodyText: string,
  model: string,
  maxModelLen: number,
  embeddingSize: number,
): PreparedEmbeddings {
  let json: unknown;
  try {
    json = JSON.parse(bodyText);
  } catch (err) {
    throw new VllmError(400, `Invalid JSON body: ${(err as Error).message}`);
  }
  const parsed = embeddingRequest.safeParse(json);
  if (!parsed.success) throw new VllmError(400, describeZodError(parsed.error));
  const body = parsed.data;
  if (body.model !== undefined && body.model !== null && body.model !== model) {
    throw new VllmError(404, `The model \`${body.model}\` does not exist.`);
  }
  const input = body.input;
  let inputs: number[][];
  if (typeof input === "string") inputs = [tokenize(input)];
  else if (typeof input[0] === "string") inputs = (input as string[]).map(tokenize);
  else if (typeof input[0] === "number") inputs = [input as number[]];
  else inputs = input as number[][];
  const truncate = body.truncate_prompt_tokens;
  if (truncate !== undefined && truncate !== null) {
    const keep = truncate === -1 ? maxModelLen : truncate;
    inputs = inputs.map((tokens) => tokens.slice(-keep));
  }
  for (const tokens of inputs) {
    if (tokens.length === 0) throw new VllmError(400, "The input is empty.");
    if (tokens.length > maxModelLen)
      throw new VllmError(
        400,
        `This model's maximum context length is ${maxModelLen} tokens. However, you requested ` +
          `${tokens.length} tokens in the input for embedding generation. Please reduce the length of the input.`,
      );
  }
  const dimensions = body.dimensions ?? embeddingSize;
  if (dimensions > embeddingSize)
    throw new VllmError(400, `Dimensions must be at most ${embeddingSize} for this model.`);
  return { inputs, base64: body.encoding_format === "base64", dimensions };
}

/** The embedding of one input: unit length, `dimensions` long (matryoshka-style: a prefix, renormalised). */
export function embed(tokens: readonly number[], dimensions: number): Float32Array {
  const v = new Float64Array(dimensions);
  for (const id of tokens) {
    // xorshift32 seeded by the token id: the token's direction, the same in every process.
    let x = (id * 2654435761 + 1) >>> 0 || 1;
    for (let i = 0; i < dimensions; i++) {
      x ^= x << 13;
      x >>>= 0;
      x ^= x >>> 17;
      x ^= x << 5;
      x >>>= 0;
      (v[i] as number) += x / 2 ** 31 - 1;
    }
  }
  let norm = 0;
  for (const c of v) norm += c * c;
  norm = Math.sqrt(norm) || 1;
  return Float32Array.from(v, (c) => c / norm);
}

/** The vector as vLLM's base64 encoding_format sends it: little-endian float32 bytes. */
export function toBase64(vector: Float32Array): string {
  const bytes = Buffer.alloc(vector.length * 4);
  for (let i = 0; i < vector.length; i++) bytes.writeFloatLE(vector[i] as number, i * 4);
  return bytes.toString("base64");
}

/**
 * Runs the inputs through the engine (each a one-token sequence: the prefill is the work) and resolves
 * with the response body; rejects with a 500 VllmError if a sequence is aborted. `signal` aborts every
 * sequence (the client went away).
 */
/** vLLM's answer to POST /v1/embeddings. */
export interface EmbeddingsAnswer {
  readonly id: string;
  readonly object: "list";
  readonly created: number;
  readonly model: string;
  readonly data: readonly { index: number; object: "embedding"; embedding: string | number[] }[];
  readonly usage: { prompt_tokens: number; total_tokens: number; completion_tokens: number };
}

export function runEmbeddings(
  prepared: PreparedEmbeddings,
  engine: Engine,
  model: string,
  requestId: string,
  signal: AbortSignal,
): Promise<EmbeddingsAnswer> {
  return new Promise((resolve, reject) => {
    const handles: SequenceHandle[] = [];
    let left = prepared.inputs.length;
    let failed = false;
    const onAbort = () => {
      for (const h of handles) h.abort();
    };
    signal.addEventListener("abort", onAbort, { once: true });
    for (const tokens of prepared.inputs) {
      let handle: SequenceHandle;
      try {
        handle = engine.submit(
          { promptTokens: tokens, targetTokens: 1, finishReason: "length", pooling: true },
          {
            onToken() {},
            onFinish(result) {
              if (result.reason === "abort" && !failed) {
                failed = true;
                signal.removeEventListener("abort", onAbort);
                reject(new VllmError(500, "The request was aborted."));
              }
              if (--left > 0 || failed) return;
              signal.removeEventListener("abort", onAbort);
              const promptTokens = prepared.inputs.reduce((n, t) => n + t.length, 0);
              resolve({
                id: `embd-${requestId}`,
                object: "list",
                created: Math.floor(Date.now() / 1000),
                model,
                data: prepared.inputs.map((t, index) => {
                  const vector = embed(t, prepared.dimensions);
                  return {
                    index,
                    object: "embedding",
                    embedding: prepared.base64 ? toBase64(vector) : Array.from(vector),
                  };
                }),
                usage: { prompt_tokens: promptTokens, total_tokens: promptTokens, completion_tokens: 0 },
              });
            },
          },
        );
      } catch (err) {
        // A prompt the KV cache cannot hold: rejected before it ran, as vLLM's input validation does.
        failed = true;
        onAbort();
        signal.removeEventListener("abort", onAbort);
        reject(new VllmError(400, (err as Error).message));
        return;
      }
      handles.push(handle);
    }
  });
}
