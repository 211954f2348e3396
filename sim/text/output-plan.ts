/**
 * Decides, before a request runs, everything about its output: the text of every token, how many tokens
 * it gets, why it stops, and which stop string (if any) ended it. The engine then only has to pace the
 * tokens. Output is pseudo-random English-like words from a seeded generator: the same seed and request
 * give the same output, as with vLLM's `seed`.
 *
 * Length: `ignore_eos` runs to max_tokens; otherwise the reply "ends by itself" after a length drawn
 * uniformly from 1 to 2 x meanOutputTokens, unless max_tokens comes first (finish_reason "length").
 * Stop strings: generation stops at the token that completes a stop string; the returned text excludes
 * the stop string, as vLLM does (finish_reason "stop", stop_reason the string).
 */
import { createRng } from "../../common/random.js";
import { pieceId, tokenizePieces } from "./tokenizer.js";

const WORDS = (
  "the of and to in is that it for as with was on be by this are from at or an have not but which one all " +
  "their can has more will other about into than time only new some could these two may first then do any " +
  "like my now over such our man me even most made after also did many before must through back years where " +
  "much your way well down should because each just those people how too little state good very make world " +
  "still own see men work long get here between both life being under never day same another know while last " +
  "might us great old year off come since against go came right used take three model token cache replica " +
  "stream batch queue latency prefix kernel memory request gateway cluster node pod schedule route signal"
).split(" ");

/** What a request will produce. */
export interface OutputPlan {
  /** The text each token adds to the reply; a token completing a stop string may add less than its piece. */
  readonly deltas: readonly string[];
  /** The token ids of the output, for prefix caching of later turns. */
  readonly tokenIds: readonly number[];
  readonly finishReason: "stop" | "length";
  /** The stop string that ended the reply, if one did. */
  readonly stopReason: string | undefined;
}

/** What shapes the output. */
export interface OutputRequest {
  readonly maxTokens: number;
  readonly seed: number;
  readonly stop: readonly string[];
  readonly ignoreEos: boolean;
  readonly meanOutputTokens: number;
}

/** Plans the output of one request. */
export function planOutput(req: OutputRequest): OutputPlan {
  const rng = createRng(req.seed);
  const natural = 1 + Math.floor(rng() * 2 * req.meanOutputTokens);
  const limit = req.ignoreEos ? req.maxTokens : Math.min(req.maxTokens, natural);
  const finishByLength = req.ignoreEos || req.maxTokens < natural;

  const pieces: string[] = [];
  while (pieces.length < limit) {
    const word = WORDS[Math.floor(rng() * WORDS.length)] as string;
    const sentenceEnd = rng() < 0.08;
    const text = `${pieces.length === 0 ? "" : " "}${word}${sentenceEnd ? "." : ""}`;
    for (const piece of tokenizePieces(text)) {
      if (pieces.length < limit) pieces.push(piece);
    }
  }

  // Stop strings: find the first token whose text completes any stop string.
  let text = "";
  for (let i = 0; i < pieces.length; i++) {
    const before = text.length;
    text += pieces[i];
    for (const stop of req.stop) {
      const at = text.indexOf(stop, Math.max(0, before - stop.length + 1));
      if (at === -1) continue;
      const deltas = pieces.slice(0, i + 1);
      // The last token contributes only the text before the stop string (possibly nothing).
      deltas[i] = text.slice(before, Math.max(before, at));
      // Earlier tokens that overlap the stop string are trimmed too.
      let consumed = 0;
      for (let j = 0; j < i; j++) {
        const piece = deltas[j] as string;
        if (consumed + piece.length > at) deltas[j] = piece.slice(0, Math.max(0, at - consumed));
        consumed += piece.length;
      }
      return {
        deltas,
        tokenIds: pieces.slice(0, i + 1).map(pieceId),
        finishReason: "stop",
        stopReason: stop,
      };
    }
  }
  return {
    deltas: pieces,
    tokenIds: pieces.map(pieceId),
    finishReason: finishByLength ? "length" : "stop",
    stopReason: undefined,
  };
}
