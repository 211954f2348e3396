/**
 * Log probabilities as vLLM reports them, with seeded values: for chat, `logprobs.content[]` entries of
 * {token, logprob, bytes, top_logprobs[]}; for text completions, the parallel arrays {tokens,
 * token_logprobs, top_logprobs (one {token: logprob} map per token), text_offset}. The sampled token is
 * always the most likely of its alternatives.
 */
import { createRng } from "../../common/random.js";

const ALTERNATIVES = [" the", " a", " and", ",", ".", " of", " to", " in", " is", " it", " kinfer", " model"];

/** Logprobs for each of `pieces`, `top` alternatives each, deterministic for a seed. */
export function planLogprobs(pieces: readonly string[], top: number, seed: number) {
  const rng = createRng(seed ^ 0x5bd1e995);
  return pieces.map((token) => {
    const logprob = -Math.round(rng() * 200) / 100;
    const alternatives = [{ token, logprob }];
    for (let i = 0; alternatives.length < top; i++) {
      const alt = ALTERNATIVES[(Math.floor(rng() * ALTERNATIVES.length) + i) % ALTERNATIVES.length] as string;
      if (alternatives.some((a) => a.token === alt)) continue;
      alternatives.push({ token: alt, logprob: logprob - 0.5 - Math.round(rng() * 300) / 100 });
    }
    return { token, logprob, top: alternatives.slice(0, top) };
  });
}

export type TokenLogprob = ReturnType<typeof planLogprobs>[number];

const bytes = (token: string) => [...Buffer.from(token, "utf8")];

/** One chat token's entry in `logprobs.content`. */
export function chatLogprob(t: TokenLogprob) {
  return {
    token: t.token,
    logprob: t.logprob,
    bytes: bytes(t.token),
    top_logprobs: t.top.map((a) => ({ token: a.token, logprob: a.logprob, bytes: bytes(a.token) })),
  };
}

/** A text completion's `logprobs` for tokens `list`, the first at character `offset` of the reply. */
export function completionLogprobs(list: readonly TokenLogprob[], offset: number) {
  const text_offset: number[] = [];
  let at = offset;
  for (const t of list) {
    text_offset.push(at);
    at += t.token.length;
  }
  return {
    text_offset,
    token_logprobs: list.map((t) => t.logprob),
    tokens: list.map((t) => t.token),
    top_logprobs: list.map((t) => Object.fromEntries(t.top.map((a) => [a.token, a.logprob]))),
  };
}
