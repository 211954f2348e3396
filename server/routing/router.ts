/**
 * The router: for one request, the model version (traffic weights, or a pin) and then the replica (the
 * model's policy, session affinity, prefix affinity), skipping replicas already tried by this request.
 * It reads the routing table and replica state and writes only its own memory (round-robin turns, the
 * prefix index, session bindings). Time and randomness are injected, for the routing benchmark.
 */

import { Code } from "@connectrpc/connect";
import { LRUCache } from "lru-cache";
import { ErrorReason } from "../../gen/es/kinfer/inference/v1/inference_pb.js";
import { gatewayError, noHealthyReplica } from "../errors/gateway-error.js";
import { isEligible, type Replica } from "../replicas/replica.js";
import { type Pick, pickReplica } from "./pick-replica.js";
import { createPrefixAffinityIndex, prefixBlockHashes } from "./prefix-affinity-index.js";
import type { ModelEntry, VersionEntry } from "./routing-table.js";

export interface RouterOptions {
  /** Monotonic time in ms. */
  now: () => number;
  /** In [0, 1). Default Math.random. */
  random?: () => number;
  prefixIndex: { blockChars: number; maxBlocksPerRequest: number; maxEntries: number };
  /** Session bindings kept. Default 100,000. */
  maxSessions?: number;
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
}

export interface Router {
  /** Hashes a prompt for prefix affinity. */
  hashPrompt(text: string): number[];
  /** Chooses the version; throws NOT_FOUND for an unknown pin, UNAVAILABLE when no version can serve. */
  pickVersion(model: ModelEntry, pinnedVersion: string): VersionEntry;
  /** Chooses a replica of `version` not in `exclude`; undefined when none is eligible. */
  pickReplica(
    model: ModelEntry,
    version: VersionEntry,
    input: RouteInput,
    exclude: ReadonlySet<string>,
  ): Pick | undefined;
  /** Remembers where a request was sent (its prefix blocks will be cached there; the session's replica). */
  commit(replica: Replica, input: RouteInput): void;
}

export function createRouter(options: RouterOptions): Router {
  const random = options.random ?? Math.random;
  const turns = new Map<string, { value: number }>();
  const prefixIndex = createPrefixAffinityIndex(options.prefixIndex.maxEntries);
  const sessions = new LRUCache<string, string>({ max: options.maxSessions ?? 100_000 });

  const eligible = (version: VersionEntry, exclude: ReadonlySet<string>, now: number) =>
    version.replicas.filter((r) => !exclude.has(r.id) && isEligible(r, now));

  return {
    hashPrompt: (text) =>
      prefixBlockHashes(text, options.prefixIndex.blockChars, options.prefixIndex.maxBlocksPerRequest),

    pickVersion(model, pinnedVersion) {
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
      const open = model.versions.filter((v) => v.weight > 0 && eligible(v, new Set(), now).length > 0);
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
      const candidates = eligible(version, exclude, now);
      if (candidates.length === 0) return undefined;
      const policy = model.policy;
      if (policy.sessionAffinity && input.affinityKey !== "") {
        const bound = sessions.get(`${model.name}\u0000${input.affinityKey}`);
        const replica = candidates.find((r) => r.id === bound);
        if (replica !== undefined) {
          const meanLoad = candidates.reduce((s, r) => s + r.inFlight, 0) / candidates.length;
          if (replica.inFlight <= policy.affinityLoadFactor * meanLoad + 1)
            return { replica, reason: "session" };
        }
      }
      const key = `${model.name}\u0000${version.name}`;
      let turn = turns.get(key);
      if (turn === undefined) {
        turn = { value: Math.floor(random() * 1000) };
        turns.set(key, turn);
      }
      return pickReplica(candidates, {
        now,
        policy,
        random,
        turn,
        ...(input.maxInFlight !== undefined ? { maxInFlight: input.maxInFlight } : {}),
        ...(policy.algorithm === "prefix-aware"
          ? {
              prefix: { matches: prefixIndex.matches(input.prefixHashes), blocks: input.prefixHashes.length },
            }
          : {}),
      });
    },

    commit(replica, input) {
      if (input.prefixHashes.length > 0) prefixIndex.record(input.prefixHashes, replica.id);
      if (input.affinityKey !== "") sessions.set(`${replica.model}\u0000${input.affinityKey}`, replica.id);
    },
  };
}
