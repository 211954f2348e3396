/**
 * The router: for one request, the model version (traffic weights, or a pin) and then the replica (the
 * model's policy, session affinity, prefix affinity), skipping replicas already tried by this request.
 * It reads the routing table and replica state and writes only its own memory (round-robin turns, the
 * prefix index). Time and randomness are injected, for the routing benchmark.
 *
 * Several gateway replicas route alike without sharing anything (rendezvous.ts, bounded-load consistent
 * hashing over the load every gateway reads alike from the scrapes):
 * - a session goes to the first replica in its key's rendezvous order that is not loaded over the
 *   affinity bound (affinityLoadFactor x the mean load, plus one);
 * - with prefix-aware, a prompt of at least HOME_MIN_BLOCKS blocks goes to its prefix's home (prefixHome)
 *   while the home is within that bound and under the policy's thresholds, so a shared prefix converges
 *   on one replica whichever gateway sees it; when the home is loaded, the scorer decides, with this
 *   gateway's prefix index pointing at the replicas that took the prefix before (pick-replica.ts).
 */

import { Code } from "@connectrpc/connect";
import { ErrorReason } from "../../gen/es/kinfer/inference/v1/inference_pb.js";
import { gatewayError, noHealthyReplica } from "../errors/gateway-error.js";
import { freshSignals, isEligible, type Replica } from "../replicas/replica.js";
import { type Pick, pickReplica } from "./pick-replica.js";
import { createPrefixAffinityIndex, prefixBlockHashes } from "./prefix-affinity-index.js";
import { hashString, rendezvousFirst } from "./rendezvous.js";
import type { ModelEntry, VersionEntry } from "./routing-table.js";

export interface RouterOptions {
  /** Monotonic time in ms. */
  now: () => number;
  /** In [0, 1). Default Math.random. */
  random?: () => number;
  prefixIndex: { blockChars: number; maxBlocksPerRequest: number; maxEntries: number };
}

/**
 * The shallowest prefix depth, in blocks, that has a rendezvous home (then 32, 64, ...): 16 blocks of 256
 * characters, about 1,000 tokens. A shorter prompt is placed by load: its prefill is short, and placing
 * unshared short prompts by hash rather than load costs more in queueing than a cache hit saves
 * (BENCHMARKS.md, sharegpt).
 */
export const HOME_MIN_BLOCKS = 16;

/**
 * A replica's load as every gateway sees it alike: the scraped running and waiting requests (the same
 * numbers on every gateway) plus what this gateway sent since that scrape, and never less than this
 * gateway's own requests in flight there (all it knows when the signals are stale).
 */
function affinityLoad(r: Replica, now: number, maxAgeMs: number): number {
  const s = freshSignals(r, now, maxAgeMs);
  return Math.max(r.inFlight, s === undefined ? 0 : s.running + s.waiting + r.sentSinceScrape);
}

/** What routing needs to know about a request. */
export interface RouteInput {
  /** A version named by the client (header or RoutingHints.version); empty follows the weights. */
  readonly pinnedVersion: string;
  /**
   * Requests in flight from this gateway at which a replica counts as full (flow control's
   * maxInFlightPerReplica): scored policies send elsewhere while another has room. Default: no bound.
   */
  readonly maxInFlight?: number;
  /** A session key; empty for none. */
  readonly affinityKey: string;
  /** Hashes of the prompt's leading blocks (from `hashPrompt`). */
  readonly prefixHashes: readonly number[];
  /** The LoRA adapter the request names; undefined for the base model. */
  readonly adapter?: string | undefined;
}

export interface Router {
  /** Hashes a prompt for prefix affinity. */
  hashPrompt(text: string): number[];
  /**
   * Chooses the version; throws NOT_FOUND for an unknown pin, UNAVAILABLE when no version can serve. With
   * a LoRA adapter, only versions with a replica that serves it are drawn.
   */
  pickVersion(model: ModelEntry, pinnedVersion: string, adapter?: string): VersionEntry;
  /** Chooses a replica of `version` not in `exclude`; undefined when none is eligible. */
  pickReplica(
    model: ModelEntry,
    version: VersionEntry,
    input: RouteInput,
    exclude: ReadonlySet<string>,
  ): Pick | undefined;
  /** Remembers where a request was sent (its prefix blocks will be cached there). */
  commit(replica: Replica, input: RouteInput): void;
}

export function createRouter(options: RouterOptions): Router {
  const random = options.random ?? Math.random;
  const turns = new Map<string, { value: number }>();
  const prefixIndex = createPrefixAffinityIndex(options.prefixIndex.maxEntries);

  const eligible = (version: VersionEntry, exclude: ReadonlySet<string>, now: number) =>
    version.replicas.filter((r) => !exclude.has(r.id) && isEligible(r, now));

  return {
    hashPrompt: (text) =>
      prefixBlockHashes(text, options.prefixIndex.blockChars, options.prefixIndex.maxBlocksPerRequest),

    pickVersion(model, pinnedVersion, adapter) {
      const now = options.now();
      if (pinnedVersion !== "") {
        const pinned = model.versions.find((v) => v.name === pinnedVersion);
        if (pinned === undefined) {
          throw gatewayError(
            Code.NotFound,
            ErrorReason.MODEL_NOT_FOUND,
            `model "${model.name}" has no version "${pinnedVersion}"`,
          );
        }
        return pinned;
      }
      const open = model.versions.filter(
        (v) =>
          v.weight > 0 &&
          eligible(v, new Set(), now).length > 0 &&
          (adapter === undefined || servesAdapter(model, v.replicas, adapter)),
      );
      const total = open.reduce((sum, v) => sum + v.weight, 0);
      if (total === 0) throw noHealthyReplica(model.name);
      let x = random() * total;
      for (const v of open) {
        x -= v.weight;
        if (x < 0) return v;
      }
      return open.at(-1) as VersionEntry;
    },

    pickReplica(model, version, input, exclude) {
      const now = options.now();
      let candidates: readonly Replica[] = eligible(version, exclude, now);
      if (input.adapter !== undefined)
        candidates = adapterCandidates(model, candidates, input.adapter, now, input.maxInFlight);
      if (candidates.length === 0) return undefined;
      const policy = model.policy;
      const loads = new Map(candidates.map((r) => [r, affinityLoad(r, now, policy.signalMaxAgeMs)]));
      const meanLoad = [...loads.values()].reduce((a, b) => a + b, 0) / candidates.length;
      const withinBound = (r: Replica) =>
        (loads.get(r) as number) <= policy.affinityLoadFactor * meanLoad + 1;
      if (policy.sessionAffinity && input.affinityKey !== "") {
        const [home] = rendezvousFirst(candidates, hashString(input.affinityKey), withinBound);
        if (home !== undefined) return { replica: home, reason: "session" };
      }
      const key = `${model.name}\u0000${version.name}`;
      let turn = turns.get(key);
      if (turn === undefined) {
        turn = { value: Math.floor(random() * 1000) };
        turns.set(key, turn);
      }
      const matches =
        policy.algorithm === "prefix-aware" ? prefixIndex.matches(input.prefixHashes) : undefined;
      if (matches !== undefined) {
        const full = input.maxInFlight ?? Number.POSITIVE_INFINITY;
        const home = prefixHome(candidates, input.prefixHashes, (r) => withinBound(r) && r.inFlight < full);
        if (home !== undefined) return { replica: home, reason: "prefix" };
      }
      return pickReplica(candidates, {
        now,
        policy,
        random,
        turn,
        ...(input.maxInFlight !== undefined ? { maxInFlight: input.maxInFlight } : {}),
        ...(matches !== undefined
          ? {
              prefix: {
                matches,
                blocks: input.prefixHashes.length,
              },
            }
          : {}),
      });
    },

    commit(replica, input) {
      if (input.prefixHashes.length > 0) prefixIndex.record(input.prefixHashes, replica.id);
    },
  };
}

/** Whether some replica in `replicas` serves `adapter` (declared for the model, or the replica's own). */
function servesAdapter(model: ModelEntry, replicas: readonly Replica[], adapter: string): boolean {
  return model.adapters.includes(adapter) || replicas.some((r) => r.adapters.has(adapter));
}

/**
 * The replicas a LoRA adapter's request may go to, best first as a group: of those that serve it (the
 * model declares it, or the replica has it: loaded through the admin API or discovered), the ones where
 * it is loaded already (its requests running there: vllm:lora_requests_info) and that have room (and
 * load within affinityLoadFactor of the mean); else those with a free adapter slot (fewer adapters active than --max-loras) and room, where it
 * loads without waiting for another adapter's requests to end; else every one that serves it. The usual
 * policy then picks among the group.
 */
function adapterCandidates(
  model: ModelEntry,
  candidates: readonly Replica[],
  adapter: string,
  now: number,
  maxInFlight = Number.POSITIVE_INFINITY,
): readonly Replica[] {
  const declared = model.adapters.includes(adapter);
  const serving = declared ? candidates : candidates.filter((r) => r.adapters.has(adapter));
  const room = serving.filter((r) => r.inFlight < maxInFlight);
  // Running there, not only waiting (a replica where it waits for a slot has none to give), and within
  // the load bound of session and prefix affinity: a hot adapter spreads before one replica fills up.
  const load = (r: Replica) => affinityLoad(r, now, model.policy.signalMaxAgeMs);
  const mean = serving.reduce((n, r) => n + load(r), 0) / Math.max(1, serving.length);
  const loaded = room.filter(
    (r) =>
      r.signals?.lora?.running.includes(adapter) === true &&
      load(r) <= model.policy.affinityLoadFactor * mean + 1,
  );
  if (loaded.length > 0) return loaded;
  const freeSlot = room.filter((r) => {
    const lora = r.signals?.lora;
    return lora === undefined || new Set([...lora.running, ...lora.waiting]).size < lora.max;
  });
  return freeSlot.length > 0 ? freeSlot : serving;
}

/**
 * The rendezvous home of a prompt's prefix, if it has one and `accept`s it: the first replica in the
 * rendezvous order of the prompt's deepest prefix of HOME_MIN_BLOCKS x 2^k blocks, so prompts that share
 * that prefix share the home, on every gateway. A conversation that grows moves home when it passes a
 * depth (16, 32, 64, ... blocks): a few times in its life, not every turn (and sessions with a key have
 * their own, stable home).
 */
function prefixHome(
  candidates: readonly Replica[],
  hashes: readonly number[],
  accept: (r: Replica) => boolean,
): Replica | undefined {
  if (hashes.length < HOME_MIN_BLOCKS) return undefined;
  let depth = HOME_MIN_BLOCKS;
  while (depth * 2 <= hashes.length) depth *= 2;
  const [home] = rendezvousFirst(candidates, hashes[depth - 1] as number, () => true);
  return home !== undefined && accept(home) ? home : undefined;
}
