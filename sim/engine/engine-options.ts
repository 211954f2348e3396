/**
 * The performance model's parameters: one simulated vLLM replica. Defaults describe a 7-8B model
 * (Llama-3-8B) on one H100-class 80 GB GPU; each default says where its number comes from. Every field
 * can be set from the `kinfer-sim` command line (see sim/main.ts) or when starting a replica in-process.
 */
import { z } from "zod";

/** Parameters of the engine model. */
export interface EngineOptions {
  /**
   * Most sequences in the running batch (vLLM `--max-num-seqs`). Default 256: vLLM's EngineArgs default.
   * (vLLM V1 raises it to 1024 for the API server on GPUs with 70 GiB or more; pass that to model it.)
   */
  maxNumSeqs: number;
  /**
   * Token budget of one engine step, prefill chunks plus one token per decoding sequence (vLLM
   * `--max-num-batched-tokens`, chunked prefill). Default 8192: vLLM V1's default for the OpenAI API
   * server on GPUs with 70 GiB or more.
   */
  maxNumBatchedTokens: number;
  /** Tokens per KV-cache block (vLLM `--block-size`). Default 16: vLLM's default. */
  blockSize: number;
  /**
   * KV-cache blocks on the GPU. Default 28,000 (448,000 tokens): Llama-3-8B keeps 128 KiB of KV per token
   * (2 x 32 layers x 8 KV heads x 128 dims x 2 bytes); at `--gpu-memory-utilization 0.9` an 80 GB GPU
   * leaves about 54 GiB after 16 GB of weights and activations, 54 GiB / 128 KiB / 16 = ~27,600 blocks.
   */
  numGpuBlocks: number;
  /** Context length in tokens, prompt plus output (vLLM `--max-model-len`). Default 8192: Llama-3-8B's. */
  maxModelLen: number;
  /**
   * Fixed cost of an engine step in which prefills start, in ms (paid once per step, however many
   * sequences start). Default 5: an estimate of input preparation and kernel-launch cost
   * (llm-d-inference-sim models the same term as its prefill overhead).
   */
  prefillOverheadMs: number;
  /** Prefill cost per uncached prompt token, in ms. Default 0.125 (8,000 tokens/s): SGLang's mock worker. */
  prefillMsPerToken: number;
  /** Fixed cost of one engine step, in ms. Default 6: SGLang's mock worker (ITL = 6 ms + 0.35 ms x batch). */
  decodeBaseMs: number;
  /** Cost per sequence in the batch per step, in ms. Default 0.35: SGLang's mock worker. */
  decodeMsPerSeq: number;
  /** Whether finished requests' blocks stay cached for later prompts (vLLM V1 default: on). */
  enablePrefixCaching: boolean;
  /**
   * Mean length of a reply that ends by itself (end-of-sequence) when neither max_tokens nor ignore_eos
   * cut it. Lengths are drawn uniformly from 1 to twice this. Default 128: an estimate near the mean
   * output length of ShareGPT conversations as used by vLLM's serving benchmarks.
   */
  meanOutputTokens: number;
  /** Multiplies every step's duration; >1 models a slower replica (a degraded GPU, a bad canary). Default 1. */
  slowdown: number;
  /** Length of the vectors /v1/embeddings returns (the model's hidden size). Default 4096: Llama-3-8B's. */
  embeddingSize: number;
  /**
   * Most LoRA adapters in one batch (vLLM `--max-loras`, default 1): the GPU's adapter slots. A sequence
   * whose adapter has no slot waits (later sequences may pass it); an idle adapter's slot is reused, least
   * recently used first.
   */
  maxLoras: number;
  /** Time to load an adapter into a slot, added to the step that first runs it. Default 50 ms (an estimate). */
  loraLoadMs: number;
}

export const defaultEngineOptions: Readonly<EngineOptions> = Object.freeze({
  maxNumSeqs: 256,
  maxNumBatchedTokens: 8192,
  blockSize: 16,
  numGpuBlocks: 28_000,
  maxModelLen: 8192,
  prefillOverheadMs: 5,
  prefillMsPerToken: 0.125,
  decodeBaseMs: 6,
  decodeMsPerSeq: 0.35,
  enablePrefixCaching: true,
  meanOutputTokens: 128,
  slowdown: 1,
  embeddingSize: 4096,
  maxLoras: 1,
  loraLoadMs: 50,
});

const positiveInt = z.number().int().positive();
const nonNegative = z.number().nonnegative().finite();

/** The schema every engine option set is validated against; unknown keys are rejected by name. */
export const engineOptionsSchema = z
  .object({
    maxNumSeqs: positiveInt.max(65_536),
    maxNumBatchedTokens: positiveInt,
    blockSize: positiveInt.max(1024),
    numGpuBlocks: positiveInt,
    maxModelLen: positiveInt,
    prefillOverheadMs: nonNegative,
    prefillMsPerToken: nonNegative,
    decodeBaseMs: nonNegative,
    decodeMsPerSeq: nonNegative,
    enablePrefixCaching: z.boolean(),
    meanOutputTokens: positiveInt,
    slowdown: z.number().positive().finite(),
    embeddingSize: positiveInt.max(65_536),
    maxLoras: positiveInt.max(1024),
    loraLoadMs: nonNegative,
  })
  .strict();

/** Fills defaults and validates; throws a ZodError naming the bad option. */
export function resolveEngineOptions(overrides: Partial<EngineOptions> = {}): EngineOptions {
  return engineOptionsSchema.parse({ ...defaultEngineOptions, ...overrides });
}
