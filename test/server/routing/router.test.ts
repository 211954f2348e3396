/**
 * Routing decisions on hand-made replica state: each algorithm, the thresholds and stale signals of the
 * scorers, prefix affinity and its load cap, session affinity, version weights and pins, exclusions.
 */
import { ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import {
  parseGatewayConfig,
  type RoutingPolicyConfig,
  routingPolicySchema,
} from "../../../server/config/gateway-config.js";
import { createReplica, type Replica } from "../../../server/replicas/replica.js";
import {
  createPrefixAffinityIndex,
  prefixBlockHashes,
} from "../../../server/routing/prefix-affinity-index.js";
import { createRouter, type RouteInput } from "../../../server/routing/router.js";
import {
  createRoutingTable,
  type ModelEntry,
  type VersionEntry,
} from "../../../server/routing/routing-table.js";

const t = 1000;
const now = () => t;

/** A seeded random source, for repeatable picks. */
function rng(seed = 1) {
  let s = seed;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

function table(
  policy: Partial<RoutingPolicyConfig>,
  versions: Record<string, { weight: number; replicas: number }>,
) {
  const config = parseGatewayConfig({
    routing: policy,
    models: [
      {
        name: "m",
        versions: Object.entries(versions).map(([name, v]) => ({
          name,
          weight: v.weight,
          replicas: Array.from({ length: v.replicas }, (_, i) => `http://10.0.0.${i + 1}:8000/${name}`),
        })),
      },
    ],
  });
  const tbl = createRoutingTable();
  tbl.apply(
    config,
    config.models[0]?.versions.flatMap((v) =>
      v.replicas.map((url) => ({ model: "m", version: v.name, url, ready: true })),
    ) ?? [],
    "static",
  );
  return tbl.model("m") as ModelEntry;
}

/** The model's single version. */
const only = (model: ModelEntry): VersionEntry => model.versions[0] as VersionEntry;

const router = () =>
  createRouter({
    now,
    random: rng(),
    prefixIndex: { blockChars: 16, maxBlocksPerRequest: 64, maxEntries: 1000 },
  });
const input = (over: Partial<RouteInput> = {}): RouteInput => ({
  pinnedVersion: "",
  affinityKey: "",
  prefixHashes: [],
  ...over,
});
const signal = (r: Replica, waiting: number, kv: number, age = 0) => {
  r.signals = { waiting, running: 0, kvCacheUsage: kv, scrapedAt: t - age };
};

describe("algorithms", () => {
  it("round-robin visits every replica in turn", () => {
    const model = table({ algorithm: "round-robin" }, { stable: { weight: 1, replicas: 3 } });
    const r = router();
    const version = only(model);
    const picks = Array.from(
      { length: 6 },
      () => r.pickReplica(model, version, input(), new Set())?.replica.id,
    );
    expect(new Set(picks.slice(0, 3)).size).toBe(3);
    expect(picks.slice(3)).toEqual(picks.slice(0, 3));
  });

  it("least-outstanding picks the fewest in flight", () => {
    const model = table({ algorithm: "least-outstanding" }, { stable: { weight: 1, replicas: 3 } });
    const [a, b, c] = only(model).replicas as Replica[];
    (a as Replica).inFlight = 5;
    (b as Replica).inFlight = 1;
    (c as Replica).inFlight = 3;
    expect(router().pickReplica(model, only(model), input(), new Set())?.replica).toBe(b);
  });

  it("power-of-two-choices never picks the most loaded of two replicas", () => {
    const model = table({ algorithm: "power-of-two-choices" }, { stable: { weight: 1, replicas: 2 } });
    const [a, b] = only(model).replicas as Replica[];
    (a as Replica).inFlight = 9;
    (b as Replica).inFlight = 0;
    const r = router();
    for (let i = 0; i < 20; i++)
      expect(r.pickReplica(model, only(model), input(), new Set())?.replica).toBe(b);
  });

  it("resource-aware prefers short queues and free KV cache, skipping replicas over the thresholds", () => {
    const model = table({ algorithm: "resource-aware" }, { stable: { weight: 1, replicas: 3 } });
    const [a, b, c] = only(model).replicas as Replica[];
    signal(a as Replica, 0, 0.95); // over the KV threshold (0.8)
    signal(b as Replica, 7, 0.1); // over the queue threshold (5)
    signal(c as Replica, 2, 0.5);
    const pick = router().pickReplica(model, only(model), input(), new Set());
    expect(pick).toMatchObject({ replica: c, reason: "score" });
  });

  it("ignores stale signals and falls back to least-outstanding", () => {
    const model = table(
      { algorithm: "resource-aware", signalMaxAgeMs: 200 },
      { stable: { weight: 1, replicas: 2 } },
    );
    const [a, b] = only(model).replicas as Replica[];
    signal(a as Replica, 0, 0, 500);
    signal(b as Replica, 50, 0.9, 500);
    (a as Replica).inFlight = 4;
    const pick = router().pickReplica(model, only(model), input(), new Set());
    expect(pick).toMatchObject({ replica: b, reason: "stale-signals" });
  });

  it("counts requests sent since the last scrape, so a burst spreads", () => {
    const model = table({ algorithm: "resource-aware" }, { stable: { weight: 1, replicas: 2 } });
    const reps = only(model).replicas as Replica[];
    for (const r of reps) signal(r, 0, 0.2);
    const r = router();
    const counts = new Map<string, number>();
    for (let i = 0; i < 10; i++) {
      const pick = r.pickReplica(model, only(model), input(), new Set());
      pick?.replica && pick.replica.sentSinceScrape++;
      counts.set(pick?.replica.id ?? "", (counts.get(pick?.replica.id ?? "") ?? 0) + 1);
    }
    expect([...counts.values()].sort()).toEqual([5, 5]);
  });
});

describe("prefix affinity", () => {
  it("hashes whole prefixes: a block's hash depends on everything before it", () => {
    const a = prefixBlockHashes("x".repeat(32) + "y".repeat(16), 16, 10);
    const b = prefixBlockHashes("z".repeat(16) + "x".repeat(16) + "y".repeat(16), 16, 10);
    expect(a).toHaveLength(3);
    expect(a[2]).not.toBe(b[2]);
    expect(prefixBlockHashes("x".repeat(1000), 16, 4)).toHaveLength(4);
  });

  it("the index reports how many leading blocks each replica holds", () => {
    const index = createPrefixAffinityIndex(100);
    const long = prefixBlockHashes("a".repeat(64), 16, 10);
    index.record(long, "r1");
    index.record(long.slice(0, 2), "r2");
    expect(index.matches(long)).toEqual(
      new Map([
        ["r1", 4],
        ["r2", 2],
      ]),
    );
  });

  it("sends a prompt to the replica that served its prefix, until that replica is overloaded", () => {
    const model = table({ algorithm: "prefix-aware" }, { stable: { weight: 1, replicas: 3 } });
    const reps = only(model).replicas as Replica[];
    for (const r of reps) signal(r, 0, 0.1);
    const r = router();
    const prefix = { prefixHashes: r.hashPrompt("You are a helpful assistant. ".repeat(20)) };
    const first = r.pickReplica(model, only(model), input(prefix), new Set());
    r.commit(first?.replica as Replica, input(prefix));
    const second = r.pickReplica(model, only(model), input(prefix), new Set());
    expect(second).toMatchObject({ replica: first?.replica, reason: "prefix" });
    // The warm replica is now far above the mean load: the cap drops its affinity.
    (first?.replica as Replica).inFlight = 10;
    const third = r.pickReplica(model, only(model), input(prefix), new Set());
    expect(third?.replica).not.toBe(first?.replica);
  });
});

describe("session affinity", () => {
  it("keeps a session on its replica while it is eligible and not overloaded", () => {
    const model = table({ algorithm: "least-outstanding" }, { stable: { weight: 1, replicas: 3 } });
    const reps = only(model).replicas as Replica[];
    const r = router();
    const session = input({ affinityKey: "user-7" });
    const first = r.pickReplica(model, only(model), session, new Set())?.replica as Replica;
    r.commit(first, session);
    first.inFlight = 1; // least-outstanding alone would now pick another
    expect(r.pickReplica(model, only(model), session, new Set())).toMatchObject({
      replica: first,
      reason: "session",
    });
    first.draining = true;
    expect(r.pickReplica(model, only(model), session, new Set())?.replica).not.toBe(first);
    first.draining = false;
    for (const x of reps) x.inFlight = x === first ? 9 : 0;
    expect(r.pickReplica(model, only(model), session, new Set())?.replica).not.toBe(first);
  });
});

describe("many gateways, nothing shared", () => {
  /** N gateways: each its own routing table (its own Replica objects) and router, over the same replicas. */
  const gateways = (n: number, policy: Partial<RoutingPolicyConfig> = { algorithm: "prefix-aware" }) =>
    Array.from({ length: n }, (_, g) => {
      const model = table(policy, { stable: { weight: 1, replicas: 8 } });
      return { model, router: createRouter({ now, random: rng(g + 1), prefixIndex: PREFIX }) };
    });
  const PREFIX = { blockChars: 16, maxBlocksPerRequest: 64, maxEntries: 1000 };
  const scrape = (model: ModelEntry, running: (i: number) => number) =>
    (only(model).replicas as Replica[]).forEach((r, i) => {
      r.signals = { waiting: 0, running: running(i), kvCacheUsage: 0.1, scrapedAt: t };
    });

  it("every gateway sends a session, and a long shared prefix, to the same replica with no history", () => {
    const gws = gateways(5);
    for (const g of gws) scrape(g.model, () => 2);
    for (let k = 0; k < 50; k++) {
      const session = input({ affinityKey: `user-${k}` });
      const picks = gws.map((g) => g.router.pickReplica(g.model, only(g.model), session, new Set()));
      expect(new Set(picks.map((p) => p?.replica.id)).size).toBe(1);
      expect(picks[0]?.reason).toBe("session");
      // The same document, a different question on each gateway.
      const prefixPicks = gws.map((g, i) => {
        const prompt = `${`doc ${k} `.repeat(60)}question ${i}`;
        return g.router.pickReplica(
          g.model,
          only(g.model),
          input({ prefixHashes: g.router.hashPrompt(prompt) }),
          new Set(),
        );
      });
      expect(new Set(prefixPicks.map((p) => p?.replica.id)).size).toBe(1);
      expect(prefixPicks[0]?.reason).toBe("prefix");
    }
  });

  it("homes spread keys evenly, and a loaded home spills to the same next replica everywhere", () => {
    const gws = gateways(3);
    for (const g of gws) scrape(g.model, () => 2);
    const homes = new Map<string, number>();
    const [first] = gws as [(typeof gws)[0]];
    for (let k = 0; k < 800; k++) {
      const id = first.router.pickReplica(
        first.model,
        only(first.model),
        input({ affinityKey: `s${k}` }),
        new Set(),
      )?.replica.id as string;
      homes.set(id, (homes.get(id) ?? 0) + 1);
    }
    expect(homes.size).toBe(8);
    for (const count of homes.values()) expect(count).toBeGreaterThan(60); // 100 each on average
    // The home of s0 is loaded past the bound (2 x the mean + 1) as every gateway's scrape shows it.
    const session = input({ affinityKey: "s0" });
    const home = first.router.pickReplica(first.model, only(first.model), session, new Set())?.replica.id;
    const busy = (only(first.model).replicas as Replica[]).findIndex((r) => r.id === home);
    for (const g of gws) scrape(g.model, (i) => (i === busy ? 40 : 2));
    const spilled = gws.map(
      (g) => g.router.pickReplica(g.model, only(g.model), session, new Set())?.replica.id,
    );
    expect(spilled[0]).not.toBe(home);
    expect(new Set(spilled).size).toBe(1);
  });

  it("short prompts (under 16 blocks) have no home: they go by load", () => {
    const [g] = gateways(1) as [{ model: ModelEntry; router: ReturnType<typeof createRouter> }];
    scrape(g.model, () => 0);
    const reps = only(g.model).replicas as Replica[];
    reps.forEach((r, i) => {
      r.signals = { waiting: i === 5 ? 0 : 3, running: 0, kvCacheUsage: 0.1, scrapedAt: t };
    });
    const short = input({ prefixHashes: g.router.hashPrompt("x".repeat(16 * 15)) });
    expect(g.router.pickReplica(g.model, only(g.model), short, new Set())?.replica).toBe(reps[5]);
  });
});

describe("versions", () => {
  it("splits traffic by weight and honours pins", () => {
    const model = table({}, { stable: { weight: 90, replicas: 1 }, canary: { weight: 10, replicas: 1 } });
    const r = router();
    let canary = 0;
    for (let i = 0; i < 10_000; i++) if (r.pickVersion(model, "").name === "canary") canary++;
    expect(canary / 10_000).toBeGreaterThan(0.08);
    expect(canary / 10_000).toBeLessThan(0.12);
    for (let i = 0; i < 100; i++) expect(r.pickVersion(model, "canary").name).toBe("canary");
    expect(() => r.pickVersion(model, "v9")).toThrow(ConnectError);
  });

  it("skips a version with no eligible replica, and fails when none is left", () => {
    const model = table({}, { stable: { weight: 90, replicas: 1 }, canary: { weight: 10, replicas: 1 } });
    (model.versions.find((v) => v.name === "stable")?.replicas[0] as Replica).healthy = false;
    const r = router();
    for (let i = 0; i < 50; i++) expect(r.pickVersion(model, "").name).toBe("canary");
    (model.versions.find((v) => v.name === "canary")?.replicas[0] as Replica).ejectedUntil = t + 1000;
    expect(() => r.pickVersion(model, "")).toThrow(/no replica/);
  });

  it("never picks an excluded replica (one already tried)", () => {
    const model = table({ algorithm: "round-robin" }, { stable: { weight: 1, replicas: 2 } });
    const [a, b] = only(model).replicas as Replica[];
    const r = router();
    for (let i = 0; i < 5; i++)
      expect(r.pickReplica(model, only(model), input(), new Set([a?.id ?? ""]))?.replica).toBe(b);
    expect(r.pickReplica(model, only(model), input(), new Set([a?.id ?? "", b?.id ?? ""]))).toBeUndefined();
  });
});

it("routing table rebuilds keep replica state", () => {
  const config = parseGatewayConfig({
    models: [{ name: "m", versions: [{ name: "s", replicas: ["http://a:1"] }] }],
  });
  const tbl = createRoutingTable();
  tbl.apply(config, [{ model: "m", version: "s", url: "http://a:1", ready: true }], "static");
  const replica = tbl.replicas()[0] as Replica;
  replica.inFlight = 3;
  tbl.apply(
    config,
    [
      { model: "m", version: "s", url: "http://a:1", ready: true },
      { model: "m", version: "s", url: "http://b:1", ready: true },
    ],
    "static",
  );
  expect(tbl.replicas()).toHaveLength(2);
  expect(tbl.replicas()[0]).toBe(replica);
  expect(routingPolicySchema.parse({}).algorithm).toBe("prefix-aware");
  expect(createReplica("m", "s", "http://x", "static").ready).toBe(true);
});

describe("router details", () => {
  const policyOf = (algorithm: RoutingPolicyConfig["algorithm"], replicas = 3) =>
    table({ algorithm }, { stable: { weight: 1, replicas } });
  const idle = (model: ModelEntry) => {
    for (const r of only(model).replicas as Replica[]) signal(r, 0, 0.1);
  };

  it("a session's home keeps it up to the load bound (2 x the mean + 1) and spills beyond it", () => {
    const model = policyOf("least-outstanding");
    const r = router();
    const session = input({ affinityKey: "user-1" });
    const home = r.pickReplica(model, only(model), session, new Set())?.replica as Replica;
    home.inFlight = 3; // loads 3, 0, 0: mean 1, bound 3
    expect(r.pickReplica(model, only(model), session, new Set())).toMatchObject({
      replica: home,
      reason: "session",
    });
    home.inFlight = 4; // bound 3.67
    expect(r.pickReplica(model, only(model), session, new Set())?.replica).not.toBe(home);
  });

  it("a session's load counts the scraped queue and what was sent since the scrape", () => {
    const model = policyOf("least-outstanding");
    const r = router();
    idle(model);
    const session = input({ affinityKey: "user-2" });
    const home = r.pickReplica(model, only(model), session, new Set())?.replica as Replica;
    signal(home, 40, 0.1);
    expect(r.pickReplica(model, only(model), session, new Set())?.replica).not.toBe(home);
    signal(home, 0, 0.1);
    home.sentSinceScrape = 40;
    expect(r.pickReplica(model, only(model), session, new Set())?.replica).not.toBe(home);
    home.sentSinceScrape = 0;
    expect(r.pickReplica(model, only(model), session, new Set())?.replica).toBe(home);
  });

  it("draws versions and round-robin starts from the injected random source", () => {
    const model = table(
      { algorithm: "round-robin" },
      { a: { weight: 1, replicas: 3 }, b: { weight: 1, replicas: 1 } },
    );
    const zero = createRouter({
      now,
      random: () => 0,
      prefixIndex: { blockChars: 16, maxBlocksPerRequest: 64, maxEntries: 10 },
    });
    const high = createRouter({
      now,
      random: () => 0.5,
      prefixIndex: { blockChars: 16, maxBlocksPerRequest: 64, maxEntries: 10 },
    });
    for (let i = 0; i < 20; i++) {
      expect(zero.pickVersion(model, "").name).toBe("a");
      expect(high.pickVersion(model, "").name).toBe("b");
    }
    // Turns start at floor(random() x 1000): 0 -> the first replica; 500 -> the third (500 mod 3).
    const a = model.versions[0] as VersionEntry;
    expect(zero.pickReplica(model, a, input(), new Set())?.replica).toBe(a.replicas[0]);
    expect(high.pickReplica(model, a, input(), new Set())?.replica).toBe(a.replicas[2]);
  });

  it("names the model and the version in the error for an unknown pin", () => {
    const model = policyOf("round-robin");
    expect(() => router().pickVersion(model, "v9")).toThrow('model "m" has no version "v9"');
  });

  it("keeps a round-robin turn per model version", () => {
    const model = table(
      { algorithm: "round-robin" },
      { a: { weight: 1, replicas: 2 }, b: { weight: 1, replicas: 2 } },
    );
    const r = router();
    const [a, b] = model.versions as [VersionEntry, VersionEntry];
    const picks = { a: [] as string[], b: [] as string[] };
    for (let i = 0; i < 4; i++) {
      picks.a.push(r.pickReplica(model, a, input(), new Set())?.replica.id as string);
      picks.b.push(r.pickReplica(model, b, input(), new Set())?.replica.id as string);
    }
    for (const ids of [picks.a, picks.b]) {
      expect(ids[0]).not.toBe(ids[1]);
      expect(ids.slice(2)).toEqual(ids.slice(0, 2));
    }
  });

  it("only prefix-aware sends a long prompt to its prefix's home; resource-aware goes by score", () => {
    const model = policyOf("resource-aware", 8);
    const reps = only(model).replicas as Replica[];
    for (const [i, x] of reps.entries()) signal(x, i === 3 ? 0 : 3, 0.1);
    const r = router();
    for (let k = 0; k < 20; k++) {
      const long = input({ prefixHashes: r.hashPrompt(`document ${k} `.repeat(60)) });
      expect(r.pickReplica(model, only(model), long, new Set())).toEqual({
        replica: reps[3],
        reason: "score",
      });
    }
  });

  it("passes over a prefix home that has maxInFlight requests in flight", () => {
    const model = policyOf("prefix-aware", 8);
    idle(model);
    const reps = only(model).replicas as Replica[];
    const r = router();
    const long = (maxInFlight?: number) => ({
      ...input({ prefixHashes: r.hashPrompt("shared system prompt ".repeat(40)) }),
      ...(maxInFlight === undefined ? {} : { maxInFlight }),
    });
    const home = r.pickReplica(model, only(model), long(), new Set());
    expect(home?.reason).toBe("prefix");
    for (const x of reps) x.inFlight = x === home?.replica ? 2 : 1;
    expect(r.pickReplica(model, only(model), long(3), new Set())).toEqual(home);
    expect(r.pickReplica(model, only(model), long(2), new Set())?.replica).not.toBe(home?.replica);
  });

  it("the scorer skips a replica with maxInFlight requests in flight", () => {
    const model = policyOf("resource-aware", 2);
    const [a, b] = only(model).replicas as [Replica, Replica];
    signal(a, 0, 0.1);
    signal(b, 3, 0.5);
    a.inFlight = 2;
    const r = router();
    expect(r.pickReplica(model, only(model), input(), new Set())?.replica).toBe(a);
    expect(r.pickReplica(model, only(model), { ...input(), maxInFlight: 2 }, new Set())?.replica).toBe(b);
  });

  it("a short prompt goes back to the replica it was committed to, by the scorer's prefix share", () => {
    const model = policyOf("prefix-aware");
    idle(model);
    const reps = only(model).replicas as Replica[];
    const r = router();
    const short = input({ prefixHashes: r.hashPrompt("hello there ".repeat(14)) }); // 10 blocks
    expect(short.prefixHashes).toHaveLength(10);
    expect(r.pickReplica(model, only(model), short, new Set())?.reason).toBe("score");
    r.commit(reps[2] as Replica, short);
    for (let i = 0; i < 5; i++)
      expect(r.pickReplica(model, only(model), short, new Set())).toEqual({
        replica: reps[2],
        reason: "prefix",
      });
  });

  it("a prompt of exactly 16 blocks has a home; the home follows the deepest 16 x 2^k prefix", () => {
    const model = policyOf("prefix-aware", 8);
    idle(model);
    const r = router();
    const home = (text: string) => {
      const hashes = r.hashPrompt(text);
      return {
        blocks: hashes.length,
        pick: r.pickReplica(model, only(model), input({ prefixHashes: hashes }), new Set()),
      };
    };
    const homes32 = new Set<string>();
    for (let k = 0; k < 20; k++) {
      const head = `doc ${k}:`.padEnd(16, ".").repeat(16); // 16 blocks
      const at16 = home(head);
      expect(at16.blocks).toBe(16);
      expect(at16.pick?.reason).toBe("prefix");
      // 31 blocks: still the 16-block prefix's home.
      expect(home(head + "x".repeat(15 * 16)).pick).toEqual(at16.pick);
      // 32 blocks: the 32-block prefix's home.
      const at32 = home(head + `${k}`.repeat(16 * 16).slice(0, 16 * 16));
      expect(at32.blocks).toBe(32);
      expect(at32.pick?.reason).toBe("prefix");
      homes32.add(`${at16.pick?.replica.id} ${at32.pick?.replica.id}`);
    }
    // Over 20 prompts the 32-block home is not always the 16-block one.
    expect([...homes32].some((pair) => pair.split(" ")[0] !== pair.split(" ")[1])).toBe(true);
  });
});

describe("LoRA adapters", () => {
  const lora = (r: Replica, running: string[], max = 1) => {
    r.signals = {
      waiting: 0,
      running: 0,
      kvCacheUsage: 0,
      scrapedAt: t,
      lora: { running, waiting: [], max },
    };
  };

  it("only replicas serving the adapter; where it runs first, then a free slot; a hot one spreads past the load bound", () => {
    const m = table(
      { algorithm: "least-outstanding", affinityLoadFactor: 2 },
      { stable: { weight: 1, replicas: 4 } },
    );
    const [a, b, c, d] = only(m).replicas as Replica[];
    for (const r of [a, b, c] as Replica[]) r.adapters = new Set(["sql"]);
    lora(a as Replica, ["sql"]);
    lora(b as Replica, ["chat"]); // its one slot is taken by another adapter
    lora(c as Replica, []);
    lora(d as Replica, []);
    const pick = () => router().pickReplica(m, only(m), input({ adapter: "sql" }), new Set())?.replica;
    expect(pick()).toBe(a); // where it runs, though c and d are as idle
    (a as Replica).inFlight = 3;
    expect(pick()).toBe(a); // within the bound: 3 <= 2 x mean(1) + 1
    (a as Replica).inFlight = 10;
    expect(pick()).toBe(c); // past it: a free slot (not b, whose slot "chat" holds; never d, without "sql")
    (a as Replica).inFlight = 0;
    (c as Replica).inFlight = 1;
    lora(a as Replica, []);
    expect(pick()).toBe(a); // no replica runs it: a free slot, the least outstanding of a and c
    // An adapter no replica serves: nowhere to go.
    expect(router().pickReplica(m, only(m), input({ adapter: "nope" }), new Set())).toBeUndefined();
  });

  it("a version draws an adapter's request only if one of its replicas serves it", () => {
    const m = table({}, { stable: { weight: 1, replicas: 1 }, canary: { weight: 99, replicas: 1 } });
    const stable = m.versions.find((v) => v.name === "stable") as VersionEntry;
    (stable.replicas[0] as Replica).adapters = new Set(["sql"]);
    for (let i = 0; i < 20; i++) expect(router().pickVersion(m, "", "sql").name).toBe("stable");
  });
});
