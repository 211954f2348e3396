/**
 * Rendezvous hashing (server/routing/rendezvous.ts): the same order on every caller, an even spread of
 * keys, and minimal movement when a member leaves or joins.
 */
import { describe, expect, it } from "vitest";
import { hashString, rendezvousFirst } from "../../../server/routing/rendezvous.js";

const members = (n: number) => Array.from({ length: n }, (_, i) => ({ id: `http://10.0.0.${i + 1}:8000` }));
const home = (ms: readonly { id: string }[], key: number) => rendezvousFirst(ms, key, () => true)[0]?.id;

describe("rendezvous hashing", () => {
  it("spreads 10,000 keys over 8 members within 10% of even", () => {
    const counts = new Map<string, number>();
    for (let k = 0; k < 10_000; k++) {
      const id = home(members(8), hashString(`key-${k}`)) as string;
      counts.set(id, (counts.get(id) ?? 0) + 1);
    }
    expect(counts.size).toBe(8);
    for (const c of counts.values()) expect(Math.abs(c - 1250)).toBeLessThan(125);
  });

  it("moves only the keys of a member that leaves, and only keys to a member that joins", () => {
    const eight = members(8);
    const seven = eight.slice(0, 7);
    const nine = members(9);
    let movedOnJoin = 0;
    for (let k = 0; k < 5000; k++) {
      const key = hashString(`key-${k}`);
      const before = home(eight, key);
      if (before !== eight[7]?.id) expect(home(seven, key)).toBe(before);
      const after = home(nine, key);
      if (after !== before) {
        expect(after).toBe(nine[8]?.id);
        movedOnJoin++;
      }
    }
    expect(movedOnJoin / 5000).toBeGreaterThan(0.08); // about 1/9
    expect(movedOnJoin / 5000).toBeLessThan(0.14);
  });

  it("is the same order whatever order the members are listed in, and skips members not accepted", () => {
    const ms = members(6);
    const key = hashString("prefix");
    const order = rendezvousFirst(ms, key, () => true, 6).map((m) => m.id);
    expect(rendezvousFirst([...ms].reverse(), key, () => true, 6).map((m) => m.id)).toEqual(order);
    expect(rendezvousFirst(ms, key, (m) => m.id !== order[0])[0]?.id).toBe(order[1]);
    expect(rendezvousFirst(ms, key, () => false)).toEqual([]);
  });

  it("hashString is 32-bit FNV-1a", () => {
    expect(hashString("")).toBe(0x811c9dc5);
    expect(hashString("a")).toBe(0xe40c292c);
    expect(hashString("foobar")).toBe(0xbf9cf968);
  });

  it("returns at most `count` members, the first accepted in order", () => {
    const ms = members(6);
    const key = hashString("k");
    const order = rendezvousFirst(ms, key, () => true, 6).map((m) => m.id);
    expect(rendezvousFirst(ms, key, () => true, 2).map((m) => m.id)).toEqual(order.slice(0, 2));
    expect(rendezvousFirst(ms, key, (m) => m.id !== order[1], 3).map((m) => m.id)).toEqual([
      order[0],
      order[2],
      order[3],
    ]);
    expect(rendezvousFirst(ms, key, () => true, 10)).toHaveLength(6);
  });

  it("breaks equal weights by the lower id, whatever the listing order", () => {
    // FNV-1a collisions: each pair has the same hash, so the same weight for every key.
    for (const [low, high] of [
      ["costarring", "liquid"],
      ["altarage", "zinke"],
    ] as const) {
      expect(hashString(low)).toBe(hashString(high));
      for (let k = 0; k < 20; k++) {
        const key = hashString(`key-${k}`);
        expect(rendezvousFirst([{ id: high }, { id: low }], key, () => true, 2).map((m) => m.id)).toEqual([
          low,
          high,
        ]);
        expect(rendezvousFirst([{ id: low }, { id: high }], key, () => true, 2).map((m) => m.id)).toEqual([
          low,
          high,
        ]);
      }
    }
  });
});
