/**
 * Replica selection on its own (server/routing/pick-replica.ts), a pure function of the candidates, the
 * time and the random source: what each algorithm picks and why (the reason label), the scorers' formula
 * (queue normalised across candidates, free KV cache, prefix share), the queue / KV / in-flight thresholds
 * at their boundaries, stale and missing signals, the prefix bonus's load cap, and ties.
 */
import { describe, expect, it } from "vitest";
import { type RoutingPolicyConfig, routingPolicySchema } from "../../../server/config/gateway-config.js";
import { createReplica, type Replica } from "../../../server/replicas/replica.js";
import { type PickContext, pickReplica } from "../../../server/routing/pick-replica.js";

const NOW = 10_000;

const policy = (over: Partial<RoutingPolicyConfig> = {}): RoutingPolicyConfig =>
  routingPolicySchema.parse(over);

/** Replicas r0, r1, ... with `inFlight` requests each. */
function replicas(...inFlight: number[]): Replica[] {
  return inFlight.map((n, i) => {
    const r = createReplica("m", "v", `http://r${i}:8000`, "static");
    r.inFlight = n;
    return r;
  });
}

const signal = (r: Replica, waiting: number, kv: number, age = 0) => {
  r.signals = { waiting, running: 0, kvCacheUsage: kv, scrapedAt: NOW - age };
};

/** A random source that returns these values in turn (the last one repeated). */
const seq =
  (...values: number[]) =>
  () =>
    values.length > 1 ? (values.shift() as number) : (values[0] as number);

function ctx(over: Partial<PickContext> & { policy?: RoutingPolicyConfig } = {}): PickContext {
  return { now: NOW, policy: policy(), random: seq(0), turn: { value: 0 }, ...over };
}

describe("one candidate", () => {
  it("is picked by every algorithm, with the algorithm's reason", () => {
    const [only] = replicas(3) as [Replica];
    const expected = {
      "round-robin": "round-robin",
      "least-outstanding": "least-outstanding",
      "power-of-two-choices": "power-of-two-choices",
      "resource-aware": "score",
      "prefix-aware": "score",
    } as const;
    for (const [algorithm, reason] of Object.entries(expected)) {
      const pick = pickReplica([only], ctx({ policy: policy({ algorithm: algorithm as "round-robin" }) }));
      expect(pick).toEqual({ replica: only, reason });
    }
  });
});

describe("round-robin", () => {
  it("takes the replica at the model version's turn and advances the turn by one", () => {
    const reps = replicas(0, 0, 0);
    const turn = { value: 5 };
    const c = ctx({ policy: policy({ algorithm: "round-robin" }), turn });
    const picks = [0, 1, 2, 3].map(() => pickReplica(reps, c));
    expect(picks.map((p) => p.replica)).toEqual([reps[2], reps[0], reps[1], reps[2]]);
    expect(picks.every((p) => p.reason === "round-robin")).toBe(true);
    expect(turn.value).toBe(9);
  });
});

describe("least-outstanding", () => {
  it("picks the fewest in flight, ties at random among the tied only", () => {
    const reps = replicas(0, 5, 0, 2);
    const lo = policy({ algorithm: "least-outstanding" });
    expect(pickReplica(reps, ctx({ policy: lo, random: seq(0) }))).toEqual({
      replica: reps[0],
      reason: "least-outstanding",
    });
    // random() in [0.5, 1) takes the second of the two tied replicas, never a busier one.
    expect(pickReplica(reps, ctx({ policy: lo, random: seq(0.5) })).replica).toBe(reps[2]);
    expect(pickReplica(reps, ctx({ policy: lo, random: seq(0.99) })).replica).toBe(reps[2]);
    expect(pickReplica(replicas(4, 1, 3), ctx({ policy: lo, random: seq(0.99) })).replica.id).toBe(
      "http://r1:8000",
    );
  });
});

describe("power-of-two-choices", () => {
  const p2c = policy({ algorithm: "power-of-two-choices" });

  it("compares two distinct replicas drawn at random and takes the less loaded", () => {
    // Loads: r0 0, r1 5, r2 3, r3 9. Draws 0.6 -> r2, then 0.1 over the other three -> r0.
    const reps = replicas(0, 5, 3, 9);
    expect(pickReplica(reps, ctx({ policy: p2c, random: seq(0.6, 0.1) }))).toEqual({
      replica: reps[0],
      reason: "power-of-two-choices",
    });
    // Draws 0.3 -> r1, then 0.5 over {r0, r2, r3} -> r2 (the first draw skipped): r2 is less loaded.
    expect(pickReplica(reps, ctx({ policy: p2c, random: seq(0.3, 0.5) })).replica).toBe(reps[2]);
    // Draws 0.9 -> r3, then 0.9 -> r2.
    expect(pickReplica(reps, ctx({ policy: p2c, random: seq(0.9, 0.9) })).replica).toBe(reps[2]);
    // Never the same replica twice: with two, the other one is always the second draw.
    const two = replicas(0, 7);
    for (const x of [0, 0.3, 0.7, 0.99])
      expect(pickReplica(two, ctx({ policy: p2c, random: seq(x, x) })).replica).toBe(two[0]);
  });

  it("counts a fresh scraped queue as load, a stale one not", () => {
    const [a, b] = replicas(0, 3) as [Replica, Replica];
    signal(a, 10, 0.1);
    expect(pickReplica([a, b], ctx({ policy: p2c, random: seq(0, 0) })).replica).toBe(b);
    signal(a, 10, 0.1, 1000);
    expect(pickReplica([a, b], ctx({ policy: p2c, random: seq(0, 0) })).replica).toBe(a);
  });
});

describe("resource-aware scoring", () => {
  const ra = (over: Partial<RoutingPolicyConfig> = {}) => policy({ algorithm: "resource-aware", ...over });

  it("prefers free KV cache when queues are equal", () => {
    const [a, b] = replicas(0, 0) as [Replica, Replica];
    signal(a, 0, 0.6);
    signal(b, 0, 0.1);
    expect(pickReplica([a, b], ctx({ policy: ra() }))).toEqual({ replica: b, reason: "score" });
  });

  it("normalises the queue score over the candidates' spread (weights 2 / 2)", () => {
    // Queues 0 and 1 -> queue scores 1 and 0: a 2 + 2 x 0.4 = 2.8 > b 0 + 2 x 1 = 2.
    const [a, b] = replicas(0, 0) as [Replica, Replica];
    signal(a, 0, 0.6);
    signal(b, 1, 0);
    expect(pickReplica([a, b], ctx({ policy: ra() })).replica).toBe(a);
    // Queues 0, 1, 5 -> 1, 0.8, 0: a 2 + 0.8 = 2.8 < b 1.6 + 2 = 3.6.
    const [c] = replicas(0) as [Replica];
    signal(c, 5, 0);
    expect(pickReplica([a, b, c], ctx({ policy: ra() })).replica).toBe(b);
    // Queues 1, 2, 5 -> 1, 0.75, 0: d 2 + 1.6 = 3.6 > e 1.5 + 2 = 3.5.
    const [d, e] = replicas(0, 0) as [Replica, Replica];
    signal(d, 1, 0.2);
    signal(e, 2, 0);
    expect(pickReplica([d, e, c], ctx({ policy: ra() })).replica).toBe(d);
  });

  it("counts requests sent since the scrape in the queue", () => {
    const [a, b] = replicas(0, 0) as [Replica, Replica];
    signal(a, 0, 0.1);
    signal(b, 1, 0.1);
    a.sentSinceScrape = 3;
    expect(pickReplica([a, b], ctx({ policy: ra() })).replica).toBe(b);
  });

  it("breaks score ties by fewer requests in flight", () => {
    const [a, b, c] = replicas(3, 1, 2) as [Replica, Replica, Replica];
    for (const r of [a, b, c]) signal(r, 1, 0.3);
    expect(pickReplica([a, b, c], ctx({ policy: ra(), random: seq(0.99) })).replica).toBe(b);
    const [d, e] = replicas(0, 3) as [Replica, Replica];
    for (const r of [d, e]) signal(r, 1, 0.3);
    expect(pickReplica([d, e], ctx({ policy: ra(), random: seq(0.99) })).replica).toBe(d);
  });

  it("skips a replica over the KV threshold (above, not at it) while another is under", () => {
    const [a, b] = replicas(0, 0) as [Replica, Replica];
    signal(b, 3, 0);
    signal(a, 0, 0.85); // the better score, but over 0.8
    expect(
      pickReplica([a, b], ctx({ policy: ra({ weights: { queue: 2, kvCache: 0, prefix: 3 } }) })).replica,
    ).toBe(b);
    signal(a, 0, 0.8); // at the threshold: still a candidate
    expect(
      pickReplica([a, b], ctx({ policy: ra({ weights: { queue: 2, kvCache: 0, prefix: 3 } }) })).replica,
    ).toBe(a);
  });

  it("skips a replica over the queue threshold (above, not at it) while another is under", () => {
    const kvOnly = ra({ weights: { queue: 0, kvCache: 2, prefix: 3 } });
    const [a, b] = replicas(0, 0) as [Replica, Replica];
    signal(b, 0, 0.5);
    signal(a, 6, 0); // the better score, but 6 waiting > 5
    expect(pickReplica([a, b], ctx({ policy: kvOnly })).replica).toBe(b);
    signal(a, 5, 0);
    expect(pickReplica([a, b], ctx({ policy: kvOnly })).replica).toBe(a);
  });

  it("skips a replica with maxInFlight requests in flight while another has room", () => {
    const [a, b] = replicas(2, 0) as [Replica, Replica];
    signal(a, 0, 0);
    signal(b, 3, 0.5);
    expect(pickReplica([a, b], ctx({ policy: ra(), maxInFlight: 2 })).replica).toBe(b);
    expect(pickReplica([a, b], ctx({ policy: ra(), maxInFlight: 3 })).replica).toBe(a);
    expect(pickReplica([a, b], ctx({ policy: ra() })).replica).toBe(a);
  });

  it("when every replica is over a threshold, still picks the best of them", () => {
    const [a, b, c] = replicas(0, 0, 0) as [Replica, Replica, Replica];
    signal(a, 9, 0.95);
    signal(b, 7, 0.9);
    signal(c, 8, 0.99);
    expect(pickReplica([a, b, c], ctx({ policy: ra() }))).toEqual({ replica: b, reason: "score" });
  });

  it("falls back to least-outstanding only when no replica has a fresh signal", () => {
    const [a, b] = replicas(2, 1) as [Replica, Replica];
    signal(a, 0, 0.1, 1000);
    expect(pickReplica([a, b], ctx({ policy: ra() }))).toEqual({ replica: b, reason: "stale-signals" });
    signal(a, 0, 0.1);
    expect(pickReplica([a, b], ctx({ policy: ra() })).reason).toBe("score");
  });

  it("assumes a replica with no fresh signal is at the mean KV usage of those with one", () => {
    // a 0.2 and c 0.6 fresh, b unknown -> 0.4: a scores best.
    const [a, b, c] = replicas(5, 0, 5) as [Replica, Replica, Replica];
    signal(a, 0, 0.2);
    signal(c, 0, 0.6);
    expect(pickReplica([a, b, c], ctx({ policy: ra() })).replica).toBe(a);
    // a and c both at 0.4: b ties with them at the mean and has the fewest in flight.
    signal(a, 0, 0.4);
    signal(c, 0, 0.4);
    expect(pickReplica([a, b, c], ctx({ policy: ra() })).replica).toBe(b);
  });
});

describe("prefix-aware scoring", () => {
  const pa = policy({ algorithm: "prefix-aware" });
  const prefix = (blocks: number, matches: Record<string, number>) => ({
    blocks,
    matches: new Map(Object.entries(matches)),
  });

  it("adds weights.prefix x the share of the prompt's blocks a replica holds", () => {
    const [a, b] = replicas(0, 0) as [Replica, Replica];
    signal(a, 0, 0.5);
    signal(b, 0, 0);
    // a: 2 + 1 + 3 x 2/4 = 4.5 > b: 2 + 2 = 4.
    expect(pickReplica([a, b], ctx({ policy: pa, prefix: prefix(4, { [a.id]: 2 }) }))).toEqual({
      replica: a,
      reason: "prefix",
    });
    // a at 0.8 KV: 2 + 0.4 + 1.5 = 3.9 < b 4: the KV cache wins, and the reason is the score.
    signal(a, 0, 0.8);
    expect(pickReplica([a, b], ctx({ policy: pa, prefix: prefix(4, { [a.id]: 2 }) }))).toEqual({
      replica: b,
      reason: "score",
    });
  });

  it("labels the pick by the chosen replica's own prefix share when scores tie", () => {
    // a: 2 + 2 x 0.25 + 3 x 2/4 = 4; b: 2 + 2 x 1 = 4. The tie goes to fewer in flight.
    const [a, b] = replicas(1, 0) as [Replica, Replica];
    signal(a, 0, 0.75);
    signal(b, 0, 0);
    const held = prefix(4, { [a.id]: 2 });
    expect(pickReplica([a, b], ctx({ policy: pa, prefix: held }))).toEqual({ replica: b, reason: "score" });
    a.inFlight = 0;
    b.inFlight = 1;
    expect(pickReplica([a, b], ctx({ policy: pa, prefix: held }))).toEqual({ replica: a, reason: "prefix" });
  });

  it("a prompt with no blocks scores without a prefix", () => {
    const [a, b] = replicas(0, 0) as [Replica, Replica];
    signal(a, 0, 0.5);
    signal(b, 0, 0.2);
    expect(pickReplica([a, b], ctx({ policy: pa, prefix: prefix(0, {}) }))).toEqual({
      replica: b,
      reason: "score",
    });
  });

  it("uses the prefix even when no replica has a fresh signal", () => {
    const [a, b] = replicas(0, 1) as [Replica, Replica];
    expect(pickReplica([a, b], ctx({ policy: pa, prefix: prefix(4, { [b.id]: 4 }) }))).toEqual({
      replica: b,
      reason: "prefix",
    });
  });

  it("drops the prefix bonus of a replica loaded over affinityLoadFactor x the mean + 1, keeps it at the bound", () => {
    // In flight 3, 0, 0: mean 1, bound 2 x 1 + 1 = 3: a keeps its bonus.
    const [a, b, c] = replicas(3, 0, 0) as [Replica, Replica, Replica];
    for (const r of [a, b, c]) signal(r, 0, 0.1);
    const held = prefix(4, { [a.id]: 4 });
    expect(pickReplica([a, b, c], ctx({ policy: pa, prefix: held }))).toEqual({
      replica: a,
      reason: "prefix",
    });
    // 4, 0, 0: bound 3.67 -> no bonus; b and c tie, and have fewer in flight.
    a.inFlight = 4;
    expect(pickReplica([a, b, c], ctx({ policy: pa, prefix: held })).replica).not.toBe(a);
    // 4 and 2: mean 3, bound 7 -> a keeps it.
    const [d, e] = replicas(4, 2) as [Replica, Replica];
    for (const r of [d, e]) signal(r, 0, 0.1);
    expect(pickReplica([d, e], ctx({ policy: pa, prefix: prefix(4, { [d.id]: 4 }) })).replica).toBe(d);
    // With affinityLoadFactor 1: 4 > 3 + 1? No; 5 and 2: 5 > 3.5 + 1 -> dropped.
    d.inFlight = 5;
    const tight = policy({ algorithm: "prefix-aware", affinityLoadFactor: 1 });
    expect(pickReplica([d, e], ctx({ policy: tight, prefix: prefix(4, { [d.id]: 4 }) })).replica).toBe(e);
  });
});
