/**
 * The KV cache of one replica: a fixed number of blocks, each holding `blockSize` tokens, with vLLM V1's
 * automatic prefix caching. A full block is identified by a hash chained over every token before it, so a
 * hash names a whole prefix. Blocks are reference-counted: running sequences share cached prefix blocks;
 * when the last holder lets go, the block keeps its hash and joins the free queue in least-recently-used
 * order, and is evicted only when a new block is needed.
 *
 * Written here rather than taken from lru-cache: entries must be pinned while referenced and evicted only
 * on allocation, which an LRU map does not model. The free queue is an intrusive doubly linked list, as in
 * vLLM's FreeKVCacheBlockQueue (a JavaScript Set degrades when its oldest entry is taken over and over:
 * deleted slots pile up at its front). All operations are O(1) per block.
 */

/** A prefix hash of one full block (see `hashBlocks`). */
export type BlockHash = number;

interface Block {
  readonly id: number;
  refCount: number;
  hash: BlockHash | undefined;
  /** Neighbours in the free queue; both null when the block is held. */
  prev: Block | null;
  next: Block | null;
}

/** Blocks with refCount 0, least recently used first. Cached ones keep their hash until evicted. */
class FreeQueue {
  readonly #head: Block;
  readonly #tail: Block;
  size = 0;

  constructor() {
    this.#head = { id: -1, refCount: 0, hash: undefined, prev: null, next: null };
    this.#tail = { id: -2, refCount: 0, hash: undefined, prev: this.#head, next: null };
    this.#head.next = this.#tail;
  }

  append(block: Block): void {
    const last = this.#tail.prev as Block;
    block.prev = last;
    block.next = this.#tail;
    last.next = block;
    this.#tail.prev = block;
    this.size++;
  }

  remove(block: Block): void {
    (block.prev as Block).next = block.next;
    (block.next as Block).prev = block.prev;
    block.prev = null;
    block.next = null;
    this.size--;
  }

  first(): Block | undefined {
    const first = this.#head.next as Block;
    return first === this.#tail ? undefined : first;
  }
}

export class BlockPool {
  readonly #blocks: Block[];
  readonly #free = new FreeQueue();
  readonly #byHash = new Map<BlockHash, Block>();

  constructor(numBlocks: number) {
    this.#blocks = Array.from({ length: numBlocks }, (_, id) => ({
      id,
      refCount: 0,
      hash: undefined,
      prev: null,
      next: null,
    }));
    for (const block of this.#blocks) this.#free.append(block);
  }

  /** Total blocks. */
  get size(): number {
    return this.#blocks.length;
  }

  /** Blocks not held by any sequence (cached-but-free blocks count as free, as in vLLM). */
  get freeCount(): number {
    return this.#free.size;
  }

  /** Fraction of blocks held by sequences, 0 to 1 (vllm:kv_cache_usage_perc). */
  get usage(): number {
    return 1 - this.#free.size / this.#blocks.length;
  }

  /** How many leading hashes are cached, whether held or free: the prompt blocks a sequence can reuse. */
  countCachedPrefix(hashes: readonly BlockHash[]): number {
    let n = 0;
    while (n < hashes.length && this.#byHash.has(hashes[n] as BlockHash)) n++;
    return n;
  }

  /** How many of the first `count` hashes' blocks are free now (reusing them takes them off the free list). */
  countFreeAmongCached(hashes: readonly BlockHash[], count: number): number {
    let n = 0;
    for (let i = 0; i < count; i++) {
      if (this.#byHash.get(hashes[i] as BlockHash)?.refCount === 0) n++;
    }
    return n;
  }

  /** Takes a reference on the cached blocks of the first `count` hashes; returns their ids. */
  acquireCached(hashes: readonly BlockHash[], count: number): number[] {
    const ids: number[] = [];
    for (let i = 0; i < count; i++) {
      const block = this.#byHash.get(hashes[i] as BlockHash);
      if (block === undefined) throw new Error(`block hash ${hashes[i]} is not cached`);
      if (block.refCount === 0) this.#free.remove(block);
      block.refCount++;
      ids.push(block.id);
    }
    return ids;
  }

  /** Allocates a fresh block, evicting the least recently used free one; undefined when none is free. */
  allocate(): number | undefined {
    const block = this.#free.first();
    if (block === undefined) return undefined;
    this.#free.remove(block);
    if (block.hash !== undefined) {
      this.#byHash.delete(block.hash);
      block.hash = undefined;
    }
    block.refCount = 1;
    return block.id;
  }

  /**
   * Records that a held block is full and names the prefix `hash`, so later sequences can reuse it. If
   * another block already caches that prefix (two sequences computed it at once), this one stays unnamed.
   */
  cache(id: number, hash: BlockHash): void {
    const block = this.#blocks[id] as Block;
    if (block.hash !== undefined || this.#byHash.has(hash)) return;
    block.hash = hash;
    this.#byHash.set(hash, block);
  }

  /** Drops one reference on each block; blocks nobody holds go to the free list, most recent last. */
  release(ids: readonly number[]): void {
    // Release in reverse so that a sequence's tail blocks are evicted before its head (vLLM does the same):
    // the head is the prefix other prompts are most likely to share.
    for (let i = ids.length - 1; i >= 0; i--) {
      const block = this.#blocks[ids[i] as number] as Block;
      if (block.refCount <= 0) throw new Error(`block ${block.id} released more often than acquired`);
      block.refCount--;
      if (block.refCount === 0) this.#free.append(block);
    }
  }
}

/**
 * Hashes every full block of `tokens`, each hash chained on the previous one so that it names the whole
 * prefix. 52-bit values from two independent 32-bit mixes (FNV-1a and a multiplicative hash), so that
 * collisions are negligible at the sizes simulated (millions of blocks).
 */
export function hashBlocks(tokens: ArrayLike<number>, blockSize: number, from = 0, parent = 0): BlockHash[] {
  const hashes: BlockHash[] = [];
  let prev = parent;
  for (let start = from * blockSize; start + blockSize <= tokens.length; start += blockSize) {
    let a = (0x811c9dc5 ^ (prev >>> 0)) >>> 0;
    let b = (Math.floor(prev / 0x100000000) ^ 0x9e3779b9) >>> 0;
    for (let i = start; i < start + blockSize; i++) {
      const t = (tokens[i] as number) >>> 0;
      a = Math.imul(a ^ t, 0x01000193) >>> 0;
      b = Math.imul(b ^ t, 0x85ebca6b) >>> 0;
      b = (b ^ (b >>> 13)) >>> 0;
    }
    prev = (a & 0xfffff) * 0x100000000 + b; // 20 + 32 bits
    hashes.push(prev);
  }
  return hashes;
}
