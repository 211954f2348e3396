/**
 * Rendezvous (highest-random-weight) hashing: every gateway replica ranks a model's replicas for a key the
 * same way, with no state shared between gateways, so that a session or a prompt prefix goes to the same
 * model replica whichever gateway receives it. Each replica's weight for a key is a hash of the two; the
 * order is by weight. When a replica joins or leaves, only the keys it ranks first move (1/n of them).
 *
 * Bounded load: callers take the first replica in that order that is not loaded over their bound, so a
 * popular key spills to its second replica (the same second replica on every gateway), not to a random one.
 */

/** A 32-bit FNV-1a hash of a string. */
export function hashString(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/** murmur3's finalizer: spreads every input bit over the output. */
function mix(x: number): number {
  let h = x >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/** The weight of the member whose id hashes to `memberHash` for `key`; higher ranks first. */
export function rendezvousWeight(key: number, memberHash: number): number {
  return mix(key ^ mix(memberHash + 0x9e3779b9));
}

/**
 * The first `count` of `members` in rendezvous order for `key` that `accept`s (fewer if fewer do). Ties
 * (equal weights: a 1 in 2^32 chance) go to the lower id, so that every gateway breaks them alike.
 */
export function rendezvousFirst<T extends { readonly id: string }>(
  members: readonly T[],
  key: number,
  accept: (member: T) => boolean,
  count = 1,
): T[] {
  const ranked = members.map((m) => ({ m, w: rendezvousWeight(key, hashString(m.id)) }));
  ranked.sort((a, b) => b.w - a.w || (a.m.id < b.m.id ? -1 : 1));
  const chosen: T[] = [];
  for (const { m } of ranked) {
    if (chosen.length === count) break;
    if (accept(m)) chosen.push(m);
  }
  return chosen;
}
