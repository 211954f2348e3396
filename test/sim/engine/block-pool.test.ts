/** The KV block pool: reference counts, prefix hits, LRU eviction of free cached blocks. */
import { describe, expect, it } from "vitest";
import { BlockPool, hashBlocks } from "../../../sim/engine/block-pool.js";

describe("hashBlocks", () => {
  it("hashes only full blocks, each chained on the whole prefix before it", () => {
    const a = hashBlocks([1, 2, 3, 4, 5, 6, 7, 8, 9], 4);
    expect(a).toHaveLength(2);
    const b = hashBlocks([9, 9, 9, 9, 5, 6, 7, 8], 4);
    expect(b[1]).not.toBe(a[1]); // same tokens in block 2, different prefix
    expect(hashBlocks([1, 2, 3, 4, 5, 6, 7, 8], 4)).toEqual(a);
    expect(hashBlocks([1, 2, 3, 4, 5, 6, 7, 8], 4, 1, a[0])).toEqual([a[1]]); // incremental
    expect(Number.isSafeInteger(a[0])).toBe(true);
  });
});

describe("BlockPool", () => {
  it("shares cached prefix blocks between holders and frees them when the last lets go", () => {
    const pool = new BlockPool(4);
    const hashes = hashBlocks([1, 2, 3, 4, 5, 6, 7, 8], 4);
    const first = [pool.allocate() as number, pool.allocate() as number];
    first.forEach((id, i) => {
      pool.cache(id, hashes[i] as number);
    });
    expect(pool.countCachedPrefix(hashes)).toBe(2);
    const second = pool.acquireCached(hashes, 2);
    expect(second).toEqual(first);
    expect(pool.freeCount).toBe(2);
    pool.release(first);
    expect(pool.freeCount).toBe(2); // still held by the second sequence
    pool.release(second);
    expect(pool.freeCount).toBe(4);
    expect(pool.usage).toBe(0);
    expect(pool.countCachedPrefix(hashes)).toBe(2); // free but still cached
    expect(pool.countFreeAmongCached(hashes, 2)).toBe(2);
  });

  it("evicts the least recently freed cached block first, and never a held one", () => {
    const pool = new BlockPool(3);
    const [h1, h2] = [hashBlocks([1, 1], 2)[0] as number, hashBlocks([2, 2], 2)[0] as number];
    const a = pool.allocate() as number;
    const b = pool.allocate() as number;
    pool.cache(a, h1);
    pool.cache(b, h2);
    pool.release([a]);
    pool.release([b]);
    pool.allocate(); // the never-used block goes first
    pool.allocate(); // then a (freed before b)
    expect(pool.countCachedPrefix([h1])).toBe(0);
    expect(pool.countCachedPrefix([h2])).toBe(1);
    pool.allocate();
    expect(pool.allocate()).toBeUndefined();
    expect(pool.usage).toBe(1);
  });

  it("refuses to release a block more often than it was acquired", () => {
    const pool = new BlockPool(1);
    const id = pool.allocate() as number;
    pool.release([id]);
    expect(() => pool.release([id])).toThrow(/released more often/);
  });
});
