/**
 * Replica selection within one model version: the algorithms a routing policy names. Pure functions of
 * the candidates' state, the time and a random source, so that the routing benchmark runs them in virtual
 * time exactly as the gateway does.
 *
 * - round-robin: each replica in turn (the seed article's gateway).
 * - least-outstanding: fewest requests in flight from this gateway.
 * - power-of-two-choices: the less loaded of two picked at random.
 * - resource-aware: llm-d's scoring from scraped vLLM signals. Replicas over the queue or KV thresholds
 *   (or with as many requests in flight as flow control's per-replica bound) are skipped while any other
 *   is under them; the rest score weights.queue x queue score (fewer waiting
 *   requests is better, normalised across candidates) + weights.kvCache x (1 - KV usage).
 * - prefix-aware: resource-aware plus weights.prefix x the share of the prompt's prefix blocks the replica
 *   holds (PrefixAffinityIndex), dropped for a replica loaded over affinityLoadFactor x the mean (+1), so
 *   that a popular prefix never makes a hot spot. (The router first tries the prefix's rendezvous home,
 *   router.ts; this scoring decides when the home is loaded or the prompt too short to have one.)
 * Signals older than signalMaxAgeMs are stale; with no fresh signal at all, the scorers fall back to
 * least-outstanding. Ties go to the replica with fewer requests in flight, then at random.
 */
import type { RoutingPolicyConfig } from "../config/gateway-config.js";
import { freshSignals, type Replica } from "../replicas/replica.js";

/** Why a replica was chosen (a label of the routing-decisions metric). */
export type PickReason =
  | "round-robin"
  | "least-outstanding"
  | "power-of-two-choices"
  | "score"
  | "prefix"
  | "session"
  | "stale-signals";

export interface PickContext {
  readonly now: number;
  readonly policy: RoutingPolicyConfig;
  /** In [0, 1). */
  readonly random: () => number;
  /** Round-robin position of this model version; advanced by round-robin picks. */
  readonly turn: { value: number };
  /** In-flight requests at which a replica counts as full for scored policies (default: no bound). */
  readonly maxInFlight?: number;
  /** Leading prefix blocks each replica holds, and how many blocks the prompt has (prefix-aware only). */
  readonly prefix?: { readonly matches: ReadonlyMap<string, number>; readonly blocks: number };
}

export interface Pick {
  readonly replica: Replica;
  readonly reason: PickReason;
}

/** Picks one of `candidates` (non-empty, all eligible). */
export function pickReplica(candidates: readonly Replica[], ctx: PickContext): Pick {
  if (candidates.length === 1) return { replica: candidates[0] as Replica, reason: reasonOf(ctx) };
  switch (ctx.policy.algorithm) {
    case "round-robin": {
      const replica = candidates[ctx.turn.value % candidates.length] as Replica;
      ctx.turn.value = (ctx.turn.value + 1) % 1_000_000_007;
      return { replica, reason: "round-robin" };
    }
    case "least-outstanding":
      return { replica: leastOutstanding(candidates, ctx.random), reason: "least-outstanding" };
    case "power-of-two-choices": {
      const i = Math.floor(ctx.random() * candidates.length);
      let j = Math.floor(ctx.random() * (candidates.length - 1));
      if (j >= i) j++;
      const a = candidates[i] as Replica;
      const b = candidates[j] as Replica;
      return { replica: loadOf(a, ctx) <= loadOf(b, ctx) ? a : b, reason: "power-of-two-choices" };
    }
    case "resource-aware":
    case "prefix-aware":
      return scored(candidates, ctx);
  }
}

function reasonOf(ctx: PickContext): PickReason {
  const a = ctx.policy.algorithm;
  return a === "resource-aware" || a === "prefix-aware" ? "score" : a;
}

/** Requests in flight, plus the scraped queue when it is fresh. */
function loadOf(r: Replica, ctx: PickContext): number {
  const s = freshSignals(r, ctx.now, ctx.policy.signalMaxAgeMs);
  return r.inFlight + (s?.waiting ?? 0);
}

function leastOutstanding(candidates: readonly Replica[], random: () => number): Replica {
  let best: Replica[] = [];
  let min = Number.POSITIVE_INFINITY;
  for (const r of candidates) {
    if (r.inFlight < min) {
      min = r.inFlight;
      best = [r];
    } else if (r.inFlight === min) best.push(r);
  }
  return best[Math.floor(random() * best.length)] as Replica;
}

/** Whether a replica with this queue estimate and KV usage is under the policy's thresholds and not full. */
function withinThresholds(
  r: Replica,
  queue: number,
  kv: number,
  policy: RoutingPolicyConfig,
  maxInFlight = Number.POSITIVE_INFINITY,
): boolean {
  return queue <= policy.queueThreshold && kv <= policy.kvCacheThreshold && r.inFlight < maxInFlight;
}

function scored(candidates: readonly Replica[], ctx: PickContext): Pick {
  const { policy, now } = ctx;
  const signals = candidates.map((r) => freshSignals(r, now, policy.signalMaxAgeMs));
  if (signals.every((s) => s === undefined) && ctx.prefix === undefined) {
    return { replica: leastOutstanding(candidates, ctx.random), reason: "stale-signals" };
  }
  // Queue estimate: the scraped queue plus what we sent since that scrape (so a burst does not herd).
  const kvKnown = signals.filter((s) => s !== undefined).map((s) => s.kvCacheUsage);
  const kvDefault = kvKnown.length > 0 ? kvKnown.reduce((a, b) => a + b, 0) / kvKnown.length : 0;
  const rows = candidates.map((r, i) => {
    const s = signals[i];
    return {
      r,
      queue: (s?.waiting ?? 0) + r.sentSinceScrape,
      kv: s?.kvCacheUsage ?? kvDefault,
    };
  });
  const under = rows.filter((x) => withinThresholds(x.r, x.queue, x.kv, policy, ctx.maxInFlight));
  const pool = under.length > 0 ? under : rows;
  const maxQ = Math.max(...pool.map((x) => x.queue));
  const minQ = Math.min(...pool.map((x) => x.queue));
  const meanLoad = pool.reduce((sum, x) => sum + x.r.inFlight, 0) / pool.length;
  const w = policy.weights;
  let best: { r: Replica; score: number; prefix: number }[] = [];
  let bestScore = Number.NEGATIVE_INFINITY;
  for (const x of pool) {
    const queueScore = maxQ === minQ ? 1 : (maxQ - x.queue) / (maxQ - minQ);
    let prefixScore = 0;
    if (ctx.prefix !== undefined && ctx.prefix.blocks > 0) {
      const overloaded = x.r.inFlight > policy.affinityLoadFactor * meanLoad + 1;
      prefixScore = overloaded ? 0 : (ctx.prefix.matches.get(x.r.id) ?? 0) / ctx.prefix.blocks;
    }
    const score = w.queue * queueScore + w.kvCache * (1 - x.kv) + w.prefix * prefixScore;
    if (score > bestScore + 1e-9) {
      bestScore = score;
      best = [{ r: x.r, score, prefix: prefixScore }];
    } else if (Math.abs(score - bestScore) <= 1e-9) best.push({ r: x.r, score, prefix: prefixScore });
  }
  const chosen = leastOutstanding(
    best.map((b) => b.r),
    ctx.random,
  );
  const usedPrefix = (best.find((b) => b.r === chosen)?.prefix ?? 0) > 0;
  return { replica: chosen, reason: usedPrefix ? "prefix" : "score" };
}
