/**
 * Prefix affinity: which replicas most likely hold a prompt's prefix in their KV cache. The gateway has no
 * tokenizer, so (like the Gateway API inference extension's prefix plugin) it hashes the prompt text in
 * fixed-size character blocks, each hash chained on the previous so that it names the whole prefix, and
 * remembers which replicas recently served each hash. A replica's match is the number of leading blocks it
 * served. Bounded: an LRU of at most `maxEntries` hashes, each remembering its 4 latest replicas.
 */
import { LRUCache } from "lru-cache";

const REPLICAS_PER_HASH = 4;

/** Chained hashes of the text's full blocks of `blockChars` characters, at most `maxBlocks`. */
export function prefixBlockHashes(text: string, blockChars: number, maxBlocks: number): number[] {
  const hashes: number[] = [];
  let h = 0x811c9dc5;
  const blocks = Math.min(Math.floor(text.length / blockChars), maxBlocks);
  for (let b = 0; b < blocks; b++) {
    for (let i = b * blockChars; i < (b + 1) * blockChars; i++)
      h = Math.imul(h ^ text.charCodeAt(i), 0x01000193);
    h >>>= 0;
    hashes.push(h);
  }
  return hashes;
}

export interface PrefixAffinityIndex {
  /** Records that `replicaId` now holds these blocks. */
  record(hashes: readonly number[], replicaId: string): void;
  /** For each replica that holds at least the first block, how many leading blocks it holds. */
  matches(hashes: readonly number[]): Map<string, number>;
  /** Forgets a replica (it left discovery); its entries age out of the LRU. */
  readonly size: number;
}

export function createPrefixAffinityIndex(maxEntries: number): PrefixAffinityIndex {
  const cache = new LRUCache<number, string[]>({ max: maxEntries });
  return {
    record(hashes, replicaId) {
      for (const hash of hashes) {
        const holders = cache.get(hash) ?? [];
        const next = [replicaId, ...holders.filter((id) => id !== replicaId)].slice(0, REPLICAS_PER_HASH);
        cache.set(hash, next);
      }
    },
    matches(hashes) {
      const counts = new Map<string, number>();
      for (let i = 0; i < hashes.length; i++) {
        const holders = cache.get(hashes[i] as number);
        if (holders === undefined) break;
        let extended = false;
        for (const id of holders) {
          if ((counts.get(id) ?? 0) === i) {
            counts.set(id, i + 1);
            extended = true;
          }
        }
        if (!extended) break;
      }
      return counts;
    },
    get size() {
      return cache.size;
    },
  };
}
