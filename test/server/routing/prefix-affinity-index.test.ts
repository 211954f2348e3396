/**
 * The prefix affinity index (server/routing/prefix-affinity-index.ts): block hashes that name the whole
 * prefix up to each block's end, leading-block matches per replica, the 4 latest replicas per hash, and
 * the LRU bound on hashes.
 */
import { describe, expect, it } from "vitest";
import {
  createPrefixAffinityIndex,
  prefixBlockHashes,
} from "../../../server/routing/prefix-affinity-index.js";
import { hashString } from "../../../server/routing/rendezvous.js";

describe("block hashes", () => {
  it("each is the FNV-1a hash of the text up to the block's end, and ignores what follows", () => {
    const text = "The quick brown fox jumps over the lazy dog, again and again.";
    const hashes = prefixBlockHashes(text, 8, 100);
    expect(hashes).toHaveLength(7); // 61 characters: 7 full blocks
    for (const [b, h] of hashes.entries()) expect(h).toBe(hashString(text.slice(0, (b + 1) * 8)));
    // Texts equal in their first block and different right after it share the first hash only.
    const x = prefixBlockHashes(`${"a".repeat(16)}b${"c".repeat(15)}`, 16, 10);
    const y = prefixBlockHashes(`${"a".repeat(16)}z${"c".repeat(15)}`, 16, 10);
    expect(x[0]).toBe(y[0]);
    expect(x[1]).not.toBe(y[1]);
  });
});

describe("the index", () => {
  it("counts only leading blocks: a replica that missed an earlier block matches no further", () => {
    const index = createPrefixAffinityIndex(100);
    const hashes = prefixBlockHashes("p".repeat(64), 16, 10);
    index.record(hashes, "r1");
    index.record(hashes.slice(1), "r2"); // not the first block
    index.record([hashes[0] as number, hashes[2] as number], "r3"); // a gap at the second
    expect(index.matches(hashes)).toEqual(
      new Map([
        ["r1", 4],
        ["r3", 1],
      ]),
    );
    expect(index.matches(prefixBlockHashes("q".repeat(64), 16, 10))).toEqual(new Map());
  });

  it("remembers the 4 latest distinct replicas of each hash", () => {
    const index = createPrefixAffinityIndex(100);
    const hashes = prefixBlockHashes("s".repeat(32), 16, 10);
    for (const id of ["r1", "r2", "r1", "r1", "r3", "r4"]) index.record(hashes, id);
    expect([...index.matches(hashes).keys()].sort()).toEqual(["r1", "r2", "r3", "r4"]);
    index.record(hashes, "r5"); // r2 is now the oldest
    expect([...index.matches(hashes).keys()].sort()).toEqual(["r1", "r3", "r4", "r5"]);
  });

  it("holds at most maxEntries hashes, dropping the least recently used", () => {
    const index = createPrefixAffinityIndex(3);
    const hashes = prefixBlockHashes("t".repeat(80), 16, 10);
    index.record(hashes.slice(0, 2), "r1");
    expect(index.size).toBe(2);
    index.record(hashes, "r1");
    expect(index.size).toBe(3);
    // The first blocks were evicted: nothing matches from the start any more.
    expect(index.matches(hashes)).toEqual(new Map());
  });
});
