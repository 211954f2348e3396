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
});
