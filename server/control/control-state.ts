/**
 * Control state: what operators change at run time, kept outside any one gateway process so that every
 * gateway replica applies the same and none loses it on restart. Per model:
 *
 * - `weights`: the traffic split (admin SetTrafficSplit, and the built-in rollout's steps); unset follows
 *   the config file's weights;
 * - `policy`: the routing policy (SetRoutingPolicy); unset follows the config file;
 * - `drained`: replicas (by URL) an operator drained (DrainReplica, UndrainReplica);
 * - `rollout`: the built-in rollout's progress (server/rollout/rollout.ts), so that another gateway can
 *   take it over from the stored step.
 *
 * Each model's state has a `version` (a Kubernetes resourceVersion, or a counter in the local file): a
 * change is written only over the version it was made from (optimistic concurrency). Stores:
 * memory-control-store.ts (one process, nothing kept), file-control-store.ts (`npm start`: a file),
 * kube-control-store.ts (a cluster: KinferModel objects, group kinfer.io, that every replica watches).
 * Config (the model list, versions, replicas) stays in the config file; the control state only overrides.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { z } from "zod";
import { routingPolicySchema } from "../config/gateway-config.js";

export const rolloutStateSchema = z
  .object({
    /** The rollout settings this state belongs to (a change of settings starts over). */
    fingerprint: z.string().max(4096),
    phase: z.enum(["idle", "progressing", "promoted", "rolled-back"]),
    canaryWeight: z.number().int().min(0).max(100),
    failedChecks: z.number().int().min(0).max(1000),
    /** When the current step started, wall-clock ms since the epoch. */
    stepStartedAt: z.number().int().nonnegative(),
  })
  .strict();

export type RolloutState = z.infer<typeof rolloutStateSchema>;

/** Largest traffic weight (as the admin API accepts). */
export const MAX_WEIGHT = 10_000;
/** Most drained replicas kept per model: more than any model has replicas. */
export const MAX_DRAINED = 1000;

export const modelControlSchema = z
  .object({
    weights: z.record(z.string().min(1).max(63), z.number().int().min(0).max(MAX_WEIGHT)).optional(),
    policy: routingPolicySchema.optional(),
    drained: z.array(z.string().min(1).max(2048)).max(MAX_DRAINED).default([]),
    rollout: rolloutStateSchema.optional(),
  })
  .strict();

export type ModelControl = z.infer<typeof modelControlSchema>;

/** A model's control state as stored, with the version it was read at ("" when never written). */
export interface VersionedControl {
  readonly control: ModelControl;
  readonly version: string;
}

export const EMPTY_CONTROL: ModelControl = { drained: [] };

export interface ControlStore {
  /** "memory", "file" or "kubernetes" (logs, metrics). */
  readonly kind: string;
  /** Resolves once the stored state has been read (at once for memory). */
  readonly synced: Promise<void>;
  /** The last known state of every model that has any (what this gateway applies). */
  snapshot(): ReadonlyMap<string, VersionedControl>;
  /**
   * Changes one model's state: `change` gets the stored state and returns the new one, which is written
   * over the version it was read at. A conflicting write by someone else (another gateway, another
   * operator) is re-read and `change` applied again, up to a few times; with `expectedVersion` set, the
   * change is made only if the state is still at that version (ABORTED otherwise). Resolves with the
   * state written, already applied to this gateway's snapshot. Fails with UNAVAILABLE when the store
   * cannot be written (the apiserver is unreachable): the gateway keeps serving its last known state.
   */
  update(
    model: string,
    change: (current: ModelControl) => ModelControl,
    expectedVersion?: string,
  ): Promise<VersionedControl>;
  /** Calls back after every change of the snapshot, by this gateway or another. */
  onChange(listener: () => void): () => void;
  close(): Promise<void>;
}

/** Attempts of a read-modify-write before a conflict is returned to the caller. */
export const UPDATE_ATTEMPTS = 5;

export class ControlConflict extends Error {
  override readonly name = "ControlConflict";
}

/** The error a client gets when its expected version is stale or conflicts do not settle. */
export function conflictError(model: string, detail: string): ConnectError {
  return new ConnectError(
    `model "${model}" was changed by someone else (${detail}); read it again and retry`,
    Code.Aborted,
  );
}

/** The error a client gets when the store cannot be written. */
export function unavailableError(kind: string, err: unknown): ConnectError {
  return new ConnectError(
    `the control state (${kind}) cannot be written now; the gateway keeps serving its last known state: ${
      err instanceof Error ? err.message : String(err)
    }`,
    Code.Unavailable,
  );
}

/** Validates a changed state (a bug or a bad input must not reach the store). */
export function checkControl(model: string, control: ModelControl): ModelControl {
  const parsed = modelControlSchema.safeParse(control);
  if (!parsed.success)
    throw new ConnectError(
      `invalid control state for "${model}": ${parsed.error.message}`,
      Code.InvalidArgument,
    );
  return parsed.data;
}

/** Listeners of a store, called without letting one listener's failure stop the others. */
export function createListeners(): { add(l: () => void): () => void; emit(): void } {
  const listeners = new Set<() => void>();
  return {
    add(l) {
      listeners.add(l);
      return () => listeners.delete(l);
    },
    emit() {
      for (const l of listeners) {
        try {
          l();
        } catch {
          // A listener's own failure is its own; the store's state is already updated.
        }
      }
    },
  };
}
