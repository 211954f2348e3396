/**
 * The engine model of one simulated vLLM replica: continuous batching over discrete engine steps.
 *
 * Each step runs every running sequence: a decoding sequence produces one token, a prefilling one
 * computes a chunk of its prompt, within a token budget (`maxNumBatchedTokens`, as vLLM's chunked
 * prefill). Waiting sequences are admitted in FIFO order while the batch has room (`maxNumSeqs`) and the
 * KV cache has blocks for their uncached prompt; the head of the queue blocks those behind it. A step lasts
 *
 *   (decodeBaseMs + decodeMsPerSeq x decoding sequences + prefillMsPerToken x prefill tokens
 *    + prefillOverheadMs if any sequence starts its prefill in the step) x slowdown
 *
 * so inter-token latency grows with the batch and a long prefill delays everyone's next token. A lone
 * request's time to first token is therefore overhead + uncached prompt tokens x per-token time (+ one
 * step base). When a decoding sequence needs a block and none is free, the most recently admitted
 * sequence is preempted: its blocks are released and it returns to the head of the queue to be recomputed
 * (vLLM V1's recompute preemption).
 *
 * The engine knows token ids, not text (sim/text turns requests into token plans), and reads time only
 * from its Clock, so it runs unchanged in real and virtual time. It never blocks and never throws for
 * a sequence's sake: bad specs are rejected by `submit` before anything changes.
 */

import { type BlockHash, BlockPool, hashBlocks } from "./block-pool.js";
import type { CancelTimer, Clock } from "./clock.js";
import type { EngineOptions } from "./engine-options.js";

/** Why a sequence ended, with vLLM's finish_reason names. */
export type FinishReason = "stop" | "length" | "abort";

/** What to run. */
export interface SequenceSpec {
  /** The prompt's token ids. Must not be empty. */
  readonly promptTokens: ArrayLike<number>;
  /** How many tokens to generate before finishing (at least 1). */
  readonly targetTokens: number;
  /** The finish reason reported when targetTokens is reached: "stop" (end of sequence) or "length". */
  readonly finishReason: "stop" | "length";
  /** The output's token ids, if known, so that full output blocks are cached for later turns. */
  readonly outputTokens?: ArrayLike<number>;
  /** Produce a token only every `slowFactor` steps (>= 1; fault injection). Default 1. */
  readonly slowFactor?: number;
  /**
   * A pooling request (embeddings): its one output (targetTokens 1) is the pooled prefill, which takes no
   * place in the context, so the whole context (max_model_len tokens) may be prompt, as in vLLM.
   */
  readonly pooling?: boolean;
  /** The LoRA adapter the sequence runs with (vLLM's lora_request); undefined for the base model. */
  readonly lora?: string;
}

/** How a sequence ended. All times are the engine clock's, in ms. */
export interface SequenceResult {
  readonly reason: FinishReason;
  readonly promptTokens: number;
  readonly completionTokens: number;
  /** Prompt tokens served from the prefix cache at the sequence's first admission. */
  readonly cachedTokens: number;
  readonly arrivalMs: number;
  /** When the sequence was first admitted to the batch; undefined if it never was. */
  readonly scheduledMs: number | undefined;
  /** When the first token was produced; undefined if none was. */
  readonly firstTokenMs: number | undefined;
  readonly finishMs: number;
}

/** Receives one sequence's progress. Callbacks run synchronously inside engine steps: keep them short. */
export interface SequenceListener {
  /** Token `index` (0-based) was produced at `atMs`. */
  onToken(index: number, atMs: number): void;
  /** The sequence ended; called exactly once, also after abort(). */
  onFinish(result: SequenceResult): void;
}

/** A submitted sequence. */
export interface SequenceHandle {
  readonly id: number;
  /** Ends the sequence now with reason "abort" and frees its KV blocks. Idempotent. */
  abort(): void;
}

/** Engine-wide events, for metrics. */
export interface EngineObserver {
  /** A token other than the first was produced, `gapMs` after the sequence's previous one. */
  onInterToken?(gapMs: number): void;
  /** A sequence ended. */
  onSequenceFinished?(result: SequenceResult): void;
}

/** The engine's state now: what /metrics reports. */
export interface EngineStats {
  readonly running: number;
  readonly waiting: number;
  /** Fraction of KV blocks in use, 0 to 1. */
  readonly kvCacheUsage: number;
  readonly prefixCacheQueries: number;
  readonly prefixCacheHits: number;
  readonly preemptions: number;
  readonly promptTokens: number;
  readonly generationTokens: number;
  /** Adapters of running sequences, and of waiting ones (vllm:lora_requests_info's labels). */
  readonly runningLoras: readonly string[];
  readonly waitingLoras: readonly string[];
  /** Adapters loaded into a slot so far (each load cost loraLoadMs). */
  readonly loraLoads: number;
}

/** One simulated replica's engine. */
export interface Engine {
  /** Queues a sequence; throws RangeError (and changes nothing) if it can never run. */
  submit(spec: SequenceSpec, listener: SequenceListener): SequenceHandle;
  stats(): EngineStats;
  readonly options: Readonly<EngineOptions>;
  /** Changes the slowdown factor for steps that start from now on. */
  setSlowdown(factor: number): void;
}

interface Sequence {
  readonly id: number;
  readonly spec: SequenceSpec;
  readonly listener: SequenceListener;
  readonly promptLen: number;
  readonly slowFactor: number;
  readonly arrivalMs: number;
  state: "waiting" | "running" | "done";
  /** KV blocks held, in token order. */
  blocks: number[];
  /** Tokens whose KV is computed (prompt, then generated ones). */
  computed: number;
  /** Tokens to compute before the next token can be sampled: the prompt, or prompt + output after preemption. */
  prefillTarget: number;
  /** Tokens generated so far. */
  generated: number;
  /** Progress towards the next token when slowFactor > 1. */
  progress: number;
  cachedTokens: number | undefined;
  scheduledMs: number | undefined;
  firstTokenMs: number | undefined;
  lastTokenMs: number;
  /** How many of `blocks` are named in the prefix cache. */
  cachedBlocks: number;
  /** Prefix hashes of the sequence's full blocks computed so far (grown incrementally). */
  hashes: BlockHash[];
}

interface PlannedWork {
  readonly seq: Sequence;
  /** Prompt tokens to compute this step; 0 for a decode step. */
  readonly prefill: number;
  /** Whether this is the first chunk of the sequence's prefill (which pays prefillOverheadMs). */
  readonly startsPrefill: boolean;
  /** Whether this step loads the sequence's adapter into a slot (which pays loraLoadMs). */
  readonly loadsLora?: boolean;
}

/** Creates an engine. `options` must already be validated (see resolveEngineOptions). */
export function createEngine(options: EngineOptions, clock: Clock, observer: EngineObserver = {}): Engine {
  const opts = { ...options };
  const pool = new BlockPool(opts.numGpuBlocks);
  const waiting: Sequence[] = [];
  const running: Sequence[] = [];
  let nextId = 1;
  let stepTimer: CancelTimer | undefined;
  let lastStepEndMs = Number.NEGATIVE_INFINITY;
  const counters = {
    prefixCacheQueries: 0,
    prefixCacheHits: 0,
    preemptions: 0,
    promptTokens: 0,
    generationTokens: 0,
    loraLoads: 0,
  };
  /** Adapters in a GPU slot (at most maxLoras), with when each last ran: the least recent is reused first. */
  const loraSlots = new Map<string, number>();

  /** Adapters of the running sequences. */
  function activeLoras(): Set<string> {
    const active = new Set<string>();
    for (const seq of running) if (seq.spec.lora !== undefined) active.add(seq.spec.lora);
    return active;
  }

  /**
   * Whether `lora` can have a slot now: it holds one (no load), or one is free, or one is held by an
   * adapter no running sequence uses (that one is evicted, least recently used first). Undefined when every
   * slot is in use by running sequences. Changes nothing: `takeSlot` does, once the sequence is admitted.
   */
  function slotFor(lora: string, active: Set<string>): { loads: boolean; evicts?: string } | undefined {
    if (loraSlots.has(lora)) return { loads: false };
    if (loraSlots.size < opts.maxLoras) return { loads: true };
    let victim: string | undefined;
    let oldest = Number.POSITIVE_INFINITY;
    for (const [name, usedAt] of loraSlots)
      if (!active.has(name) && usedAt < oldest) {
        victim = name;
        oldest = usedAt;
      }
    return victim === undefined ? undefined : { loads: true, evicts: victim };
  }

  function takeSlot(lora: string, slot: { loads: boolean; evicts?: string }): void {
    if (slot.evicts !== undefined) loraSlots.delete(slot.evicts);
    loraSlots.set(lora, clock.now());
    if (slot.loads) counters.loraLoads++;
  }

  function tokensOf(seq: Sequence, count: number): ArrayLike<number> {
    // The token ids of the sequence's first `count` tokens, for block hashing (prompt, then known output).
    const prompt = seq.spec.promptTokens;
    if (count <= prompt.length) return prompt;
    const out = seq.spec.outputTokens;
    if (out === undefined) return prompt;
    const all = new Array<number>(count);
    for (let i = 0; i < prompt.length; i++) all[i] = prompt[i] as number;
    for (let i = prompt.length; i < count; i++) all[i] = out[i - prompt.length] as number;
    return all;
  }

  /** The prefix hashes of the sequence's first floor(tokenCount / blockSize) blocks. */
  function blockHashes(seq: Sequence, tokenCount: number): BlockHash[] {
    if (!opts.enablePrefixCaching) return [];
    const full = Math.floor(tokenCount / opts.blockSize);
    if (seq.hashes.length < full) {
      const more = hashBlocks(
        tokensOf(seq, full * opts.blockSize),
        opts.blockSize,
        seq.hashes.length,
        seq.hashes.at(-1),
      );
      seq.hashes.push(...more);
    }
    return seq.hashes.length === full ? seq.hashes : seq.hashes.slice(0, full);
  }

  /** Names every full block the sequence has computed, so later prompts can reuse them. */
  function cacheFullBlocks(seq: Sequence): void {
    if (!opts.enablePrefixCaching) return;
    const known = seq.promptLen + (seq.spec.outputTokens?.length ?? 0);
    const full = Math.floor(Math.min(seq.computed, known) / opts.blockSize);
    if (full <= seq.cachedBlocks) return;
    const hashes = blockHashes(seq, full * opts.blockSize);
    for (let i = seq.cachedBlocks; i < full; i++) pool.cache(seq.blocks[i] as number, hashes[i] as BlockHash);
    seq.cachedBlocks = full;
  }

  function finish(seq: Sequence, reason: FinishReason): void {
    if (seq.state === "done") return;
    const wasWaiting = seq.state === "waiting";
    seq.state = "done";
    if (wasWaiting) waiting.splice(waiting.indexOf(seq), 1);
    else running.splice(running.indexOf(seq), 1);
    pool.release(seq.blocks);
    seq.blocks = [];
    const result: SequenceResult = {
      reason,
      promptTokens: seq.promptLen,
      completionTokens: seq.generated,
      cachedTokens: seq.cachedTokens ?? 0,
      arrivalMs: seq.arrivalMs,
      scheduledMs: seq.scheduledMs,
      firstTokenMs: seq.firstTokenMs,
      finishMs: clock.now(),
    };
    observer.onSequenceFinished?.(result);
    seq.listener.onFinish(result);
  }

  /** Releases a running sequence's blocks and puts it back at the head of the queue. */
  function preempt(seq: Sequence): void {
    running.splice(running.indexOf(seq), 1);
    pool.release(seq.blocks);
    seq.blocks = [];
    seq.cachedBlocks = 0;
    seq.computed = 0;
    seq.prefillTarget = seq.promptLen + seq.generated;
    seq.state = "waiting";
    waiting.unshift(seq);
    counters.preemptions++;
  }

  /** Gives `seq` enough blocks to hold `tokens` tokens, preempting later sequences if needed. */
  function reserve(seq: Sequence, tokens: number): boolean {
    const needed = Math.ceil(tokens / opts.blockSize);
    while (seq.blocks.length < needed) {
      const id = pool.allocate();
      if (id !== undefined) {
        seq.blocks.push(id);
        continue;
      }
      const victim = running.at(-1);
      if (victim === undefined || victim === seq) return false;
      preempt(victim);
    }
    return true;
  }

  /** Tries to admit the head of the queue; returns the prompt tokens it still has to compute, or -1. */
  function admit(seq: Sequence): number {
    const target = seq.prefillTarget;
    const hashes = blockHashes(seq, target);
    // Always recompute at least the last token: its logits are needed to sample the next one.
    let hitBlocks = pool.countCachedPrefix(hashes);
    if (hitBlocks * opts.blockSize >= target) hitBlocks--;
    const newBlocks = Math.ceil(target / opts.blockSize) - hitBlocks;
    const freeAfterReuse = pool.freeCount - pool.countFreeAmongCached(hashes, hitBlocks);
    if (newBlocks > freeAfterReuse) return -1;
    seq.blocks = pool.acquireCached(hashes, hitBlocks);
    for (let i = 0; i < newBlocks; i++) seq.blocks.push(pool.allocate() as number);
    seq.cachedBlocks = hitBlocks;
    seq.computed = hitBlocks * opts.blockSize;
    const firstAdmission = seq.cachedTokens === undefined;
    if (firstAdmission) {
      seq.cachedTokens = seq.computed;
      seq.scheduledMs = clock.now();
      counters.prefixCacheQueries += seq.promptLen;
      counters.prefixCacheHits += seq.computed;
    }
    seq.state = "running";
    running.push(seq);
    return target - seq.computed;
  }

  function plan(): PlannedWork[] {
    const work: PlannedWork[] = [];
    let budget = opts.maxNumBatchedTokens;
    // Running sequences first, oldest first; a decode that needs a block may preempt the newest ones.
    for (const seq of [...running]) {
      if (seq.state !== "running" || budget === 0) continue; // preempted by an older sequence in this loop
      if (seq.computed < seq.prefillTarget) {
        const chunk = Math.min(seq.prefillTarget - seq.computed, budget);
        work.push({ seq, prefill: chunk, startsPrefill: false });
        budget -= chunk;
      } else if (reserve(seq, seq.computed + 1)) {
        work.push({ seq, prefill: 0, startsPrefill: false });
        budget -= 1;
      } else {
        preempt(seq);
      }
    }
    // Then the queue, in order, while there is room. A sequence whose adapter has no slot is passed over
    // (vLLM's scheduler skips it and keeps its place); one that does not fit the KV cache stops the queue.
    const active = activeLoras();
    for (let i = 0; i < waiting.length && running.length < opts.maxNumSeqs && budget > 0; ) {
      const seq = waiting[i] as Sequence;
      const lora = seq.spec.lora;
      const slot = lora === undefined ? undefined : slotFor(lora, active);
      if (lora !== undefined && slot === undefined) {
        i++;
        continue;
      }
      const remaining = admit(seq);
      if (remaining < 0) break;
      waiting.splice(i, 1);
      if (lora !== undefined && slot !== undefined) {
        takeSlot(lora, slot);
        active.add(lora);
      }
      const chunk = Math.min(remaining, budget);
      work.push({ seq, prefill: chunk, startsPrefill: seq.generated === 0, loadsLora: slot?.loads ?? false });
      budget -= chunk;
    }
    return work.filter((w) => w.seq.state === "running");
  }

  function stepDuration(work: readonly PlannedWork[]): number {
    let decodes = 0;
    let prefillTokens = 0;
    let startsPrefill = false;
    let loraLoads = 0;
    for (const w of work) {
      if (w.prefill === 0) decodes++;
      prefillTokens += w.prefill;
      startsPrefill ||= w.startsPrefill;
      if (w.loadsLora) loraLoads++;
    }
    // The overhead is per step, not per sequence: a batched prefill launches its kernels once.
    const ms =
      opts.decodeBaseMs +
      opts.decodeMsPerSeq * decodes +
      opts.prefillMsPerToken * prefillTokens +
      (startsPrefill ? opts.prefillOverheadMs : 0) +
      opts.loraLoadMs * loraLoads;
    return ms * opts.slowdown;
  }

  function emitToken(seq: Sequence, now: number): void {
    const index = seq.generated;
    seq.generated++;
    counters.generationTokens++;
    if (index === 0) seq.firstTokenMs = now;
    else observer.onInterToken?.(now - seq.lastTokenMs);
    seq.lastTokenMs = now;
    seq.listener.onToken(index, now);
    if (seq.state === "running" && seq.generated >= seq.spec.targetTokens) finish(seq, seq.spec.finishReason);
  }

  function completeStep(work: readonly PlannedWork[], endMs: number): void {
    stepTimer = undefined;
    lastStepEndMs = endMs;
    for (const { seq, prefill } of work) {
      if (seq.state !== "running") continue; // aborted or preempted while the step ran
      if (prefill > 0) {
        seq.computed += prefill;
        if (seq.computed < seq.prefillTarget) continue;
        cacheFullBlocks(seq);
        emitToken(seq, endMs); // the step that completes a prefill samples a token
      } else {
        seq.computed++;
        cacheFullBlocks(seq);
        seq.progress += 1 / seq.slowFactor;
        if (seq.progress + 1e-9 >= 1) {
          seq.progress -= 1;
          emitToken(seq, endMs);
        }
      }
    }
    schedule();
  }

  function schedule(): void {
    if (stepTimer !== undefined) return;
    const work = plan();
    if (work.length === 0) return;
    // A busy engine starts its next step when the last one ended (in real time, even if that timer fired
    // late); an idle one starts now.
    const start = Math.max(clock.now(), lastStepEndMs);
    const end = start + stepDuration(work);
    stepTimer = clock.setTimer(end, () => completeStep(work, end));
  }

  return {
    options: opts,
    submit(spec, listener) {
      const promptLen = spec.promptTokens.length;
      if (promptLen === 0) throw new RangeError("the prompt is empty");
      if (!Number.isInteger(spec.targetTokens) || spec.targetTokens < 1) {
        throw new RangeError("targetTokens must be a positive integer");
      }
      const contextLen = promptLen + (spec.pooling === true ? 0 : spec.targetTokens);
      if (contextLen > opts.maxModelLen) {
        throw new RangeError(
          `prompt (${promptLen}) plus output (${spec.targetTokens}) exceeds ${opts.maxModelLen}`,
        );
      }
      if (Math.ceil((promptLen + spec.targetTokens) / opts.blockSize) > opts.numGpuBlocks) {
        throw new RangeError("the sequence needs more KV blocks than the cache has");
      }
      const slowFactor = spec.slowFactor ?? 1;
      if (!(slowFactor >= 1 && Number.isFinite(slowFactor))) throw new RangeError("slowFactor must be >= 1");
      const seq: Sequence = {
        id: nextId++,
        spec,
        listener,
        promptLen,
        slowFactor,
        arrivalMs: clock.now(),
        state: "waiting",
        blocks: [],
        computed: 0,
        prefillTarget: promptLen,
        generated: 0,
        progress: 0,
        cachedTokens: undefined,
        scheduledMs: undefined,
        firstTokenMs: undefined,
        lastTokenMs: 0,
        cachedBlocks: 0,
        hashes: [],
      };
      counters.promptTokens += promptLen;
      waiting.push(seq);
      schedule();
      return {
        id: seq.id,
        abort: () => {
          if (seq.state === "done") return;
          finish(seq, "abort");
          schedule(); // freed blocks may admit a waiting sequence at the next step boundary
        },
      };
    },
    stats: () => ({
      running: running.length,
      waiting: waiting.length,
      kvCacheUsage: pool.usage,
      ...counters,
      runningLoras: [...activeLoras()],
      waitingLoras: [
        ...new Set(waiting.flatMap((seq) => (seq.spec.lora !== undefined ? [seq.spec.lora] : []))),
      ],
    }),
    setSlowdown(factor) {
      if (!(factor > 0 && Number.isFinite(factor)))
        throw new RangeError("slowdown must be a positive number");
      opts.slowdown = factor;
    },
  };
}
