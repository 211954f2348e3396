/**
 * The built-in progressive rollout, for users without Flagger: when a model's canary version has ready
 * replicas, the gateway shifts traffic to it step by step and judges each step on what it measured itself
 * for both versions over the step's interval:
 *
 * - the canary's server-side failure rate (UNAVAILABLE, INTERNAL, DEADLINE_EXCEEDED...; client mistakes do
 *   not count) must stay at or below `maxFailureRate`;
 * - the canary's time-to-first-token p95 must stay within `maxTtftRatio` times the stable version's
 *   (so a slower canary fails even when nothing errors), and below `maxTtftMs` if set.
 *
 * A step with fewer than `minRequests` canary requests is not judged (held, not advanced). `failureLimit`
 * failed checks roll back: the canary's weight goes to 0. After the weight reaches `maxWeight` and one
 * more check passes, the canary is promoted: it gets all the traffic. Either way the result stands until
 * the canary's replicas are gone (the operator removed the bad canary, or made the promoted one the new
 * stable): then all traffic returns to stable and the next canary starts a new rollout. A change of the
 * model's rollout settings also starts over.
 * Weights are stored in the control state as the admin API's traffic split would be (server/control/), so
 * every gateway replica applies them and WatchState shows every step; each decision is logged and exported
 * as kinfer_gateway_rollout_* metrics.
 *
 * With several gateway replicas, one runs the rollouts at a time: the holder of the rollout Lease
 * (server/control/lease.ts). Its progress (phase, weight, failed checks, when the step started) is stored
 * with each step, so that when it goes away the next holder resumes from the stored step. The leader judges
 * on the requests it served itself: behind a random spread of clients over gateways that is a uniform
 * sample of the traffic, and `minRequests` counts that sample. Times are wall-clock ms, shared by all.
 */
import { Code } from "@connectrpc/connect";
import { z } from "zod";
import type { RolloutState } from "../control/control-state.js";

export const rolloutSchema = z
  .object({
    /** The version being rolled out. Default "canary". */
    canary: z.string().default("canary"),
    /** The version it replaces. Default "stable". */
    stable: z.string().default("stable"),
    /** Weight added to the canary per passed step, out of 100. Default 10. */
    stepWeight: z.number().int().min(1).max(100).default(10),
    /** Weight at which the canary is promoted after one more passed check. Default 50. */
    maxWeight: z.number().int().min(1).max(100).default(50),
    /** Length of a step. Default 60 s. */
    intervalMs: z.number().int().min(50).default(60_000),
    /** Canary requests a step needs to be judged. Default 20. */
    minRequests: z.number().int().min(1).default(20),
    /** Highest server-side failure rate of the canary (0 to 1). Default 0.01. */
    maxFailureRate: z.number().min(0).max(1).default(0.01),
    /** Highest ratio of the canary's TTFT p95 to the stable version's. Default 1.5. */
    maxTtftRatio: z.number().min(1).default(1.5),
    /** Highest canary TTFT p95 in ms; unset: only the ratio applies. */
    maxTtftMs: z.number().positive().optional(),
    /** Failed checks that roll back. Default 2. */
    failureLimit: z.number().int().min(1).default(2),
  })
  .strict();

export type RolloutConfig = z.infer<typeof rolloutSchema>;

/** Server-side failures: what a canary is judged on. */
const SERVER_FAILURES = new Set([
  Code.Unavailable,
  Code.Internal,
  Code.Unknown,
  Code.DeadlineExceeded,
  Code.DataLoss,
]);

/** One step's observations of one version. Bounded: TTFT samples are capped (a uniform reservoir). */
class StepStats {
  static readonly MAX_SAMPLES = 5000;
  requests = 0;
  failures = 0;
  private ttfts: number[] = [];
  private seen = 0;

  add(code: Code | undefined, ttftMs: number | undefined, random: () => number): void {
    this.requests++;
    if (code !== undefined && SERVER_FAILURES.has(code)) this.failures++;
    if (ttftMs === undefined) return;
    this.seen++;
    if (this.ttfts.length < StepStats.MAX_SAMPLES) this.ttfts.push(ttftMs);
    else {
      const i = Math.floor(random() * this.seen);
      if (i < StepStats.MAX_SAMPLES) this.ttfts[i] = ttftMs;
    }
  }

  p95(): number | undefined {
    if (this.ttfts.length === 0) return undefined;
    const sorted = [...this.ttfts].sort((a, b) => a - b);
    return sorted[Math.min(sorted.length - 1, Math.floor(0.95 * sorted.length))];
  }
}

export type RolloutPhase = "idle" | "progressing" | "promoted" | "rolled-back";

/** What the controller needs of the gateway. */
export interface RolloutTarget {
  /** Whether the version has a replica that can take requests now. */
  hasReadyReplica(model: string, version: string): boolean;
  /** Whether this gateway runs rollouts now (it holds the Lease; always, with one gateway). */
  isLeader(): boolean;
  /** A model's rollout progress as stored (the control state), if any. */
  stored(model: string): RolloutState | undefined;
  /**
   * Stores a model's progress and the weights it implies (versions not named get 0), for every gateway to
   * apply. Rejects when the store cannot be written; the controller tries again on its next tick.
   */
  persist(model: string, state: RolloutState, weights: ReadonlyMap<string, number>): Promise<void>;
  log(message: string, fields: Record<string, unknown>): void;
  /** Exported state: the phase (as a label) and the canary's weight. */
  report(model: string, phase: RolloutPhase, canaryWeight: number): void;
}

export interface RolloutController {
  /** A request ended (called by the pipeline for every request). */
  observe(model: string, version: string, code: Code | undefined, ttftMs: number | undefined): void;
  /** The rollout of each configured model. */
  state(model: string): { phase: RolloutPhase; canaryWeight: number; failedChecks: number } | undefined;
  /** New config: models whose rollout settings changed start over. */
  configure(rollouts: ReadonlyMap<string, RolloutConfig>): void;
  close(): void;
}

interface ModelRollout {
  config: RolloutConfig;
  fingerprint: string;
  phase: RolloutPhase;
  canaryWeight: number;
  failedChecks: number;
  stats: Map<string, StepStats>;
  stepStarted: number;
  /** A write of this rollout's progress is on its way: decide nothing until it lands. */
  writing: boolean;
  /** Progress not stored yet (a write failed): stored again before anything else. */
  dirty: boolean;
  /** Not yet resumed from the stored progress (new here, or leadership just gained). */
  resume: boolean;
  /** What was last reported in metrics (by a gateway that does not lead, from the stored state). */
  reported: string;
}

const stateOf = (r: ModelRollout): RolloutState => ({
  fingerprint: r.fingerprint,
  phase: r.phase,
  canaryWeight: r.canaryWeight,
  failedChecks: r.failedChecks,
  stepStartedAt: Math.round(r.stepStarted),
});

export function createRolloutController(
  target: RolloutTarget,
  now: () => number = Date.now,
  random: () => number = Math.random,
): RolloutController {
  const rollouts = new Map<string, ModelRollout>();

  /** Stores the rollout's progress and weights; a failed write is made again at the next tick. */
  const apply = (model: string, r: ModelRollout) => {
    const { canary, stable } = r.config;
    const weights = new Map([
      [stable, 100 - r.canaryWeight],
      [canary, r.canaryWeight],
    ]);
    r.writing = true;
    r.dirty = false;
    target.persist(model, stateOf(r), weights).then(
      () => {
        r.writing = false;
        target.report(model, r.phase, r.canaryWeight);
      },
      (err: unknown) => {
        r.writing = false;
        r.dirty = true;
        target.log("rollout progress not stored; trying again", { model, err: String(err) });
      },
    );
  };

  const newStep = (r: ModelRollout) => {
    r.stats = new Map();
    r.stepStarted = now();
  };

  /** A gateway that leads takes the stored progress of its rollouts (it may have been another's). */
  const adopt = (r: ModelRollout, s: RolloutState | undefined) => {
    if (s === undefined || s.fingerprint !== r.fingerprint) return;
    const mine = stateOf(r);
    if (JSON.stringify(mine) === JSON.stringify(s)) return;
    r.phase = s.phase;
    r.canaryWeight = s.canaryWeight;
    r.failedChecks = s.failedChecks;
    r.stepStarted = s.stepStartedAt;
    r.stats = new Map();
  };

  function tick(): void {
    const leading = target.isLeader();
    for (const [model, r] of rollouts) {
      const { config } = r;
      const stored = target.stored(model);
      if (!leading) {
        r.resume = true; // when it leads again, another gateway may have moved the rollout on
        // Followers export the leader's progress, so that every gateway's metrics show the rollout.
        if (stored?.fingerprint === r.fingerprint) {
          const key = `${stored.phase}/${stored.canaryWeight}`;
          if (key !== r.reported) target.report(model, stored.phase, stored.canaryWeight);
          r.reported = key;
        }
        continue;
      }
      if (r.resume) {
        adopt(r, stored);
        r.resume = false;
      }
      if (r.writing) continue;
      if (r.dirty) {
        apply(model, r);
        continue;
      }
      if (r.phase === "idle") {
        if (target.hasReadyReplica(model, config.canary) && target.hasReadyReplica(model, config.stable)) {
          r.phase = "progressing";
          r.canaryWeight = config.stepWeight;
          r.failedChecks = 0;
          newStep(r);
          apply(model, r);
          target.log("rollout started", { model, canary: config.canary, weight: r.canaryWeight });
        }
        continue;
      }
      if (r.phase !== "progressing") {
        // Finished (promoted or rolled back) and the canary's replicas are gone: back to idle with all
        // traffic on stable, so that the next canary starts a new rollout.
        if (!target.hasReadyReplica(model, config.canary)) {
          r.phase = "idle";
          r.canaryWeight = 0;
          apply(model, r);
          target.log("rollout reset: the canary has no replicas", { model });
        }
        continue;
      }
      if (now() - r.stepStarted < config.intervalMs) continue;
      const canary = r.stats.get(config.canary) ?? new StepStats();
      const stable = r.stats.get(config.stable) ?? new StepStats();
      if (!target.hasReadyReplica(model, config.canary) || canary.requests < config.minRequests) {
        target.log("rollout step held: too few canary requests", { model, requests: canary.requests });
        newStep(r);
        continue;
      }
      const failureRate = canary.failures / canary.requests;
      const canaryP95 = canary.p95();
      const stableP95 = stable.p95();
      const reasons: string[] = [];
      if (failureRate > config.maxFailureRate) reasons.push(`failure rate ${failureRate.toFixed(3)}`);
      if (canaryP95 !== undefined && stableP95 !== undefined && canaryP95 > stableP95 * config.maxTtftRatio)
        reasons.push(`TTFT p95 ${canaryP95.toFixed(0)} ms vs stable ${stableP95.toFixed(0)} ms`);
      if (canaryP95 !== undefined && config.maxTtftMs !== undefined && canaryP95 > config.maxTtftMs)
        reasons.push(`TTFT p95 ${canaryP95.toFixed(0)} ms`);
      const fields = {
        model,
        weight: r.canaryWeight,
        requests: canary.requests,
        failureRate,
        canaryP95,
        stableP95,
      };
      if (reasons.length > 0) {
        r.failedChecks++;
        target.log("rollout check failed", { ...fields, reasons, failedChecks: r.failedChecks });
        if (r.failedChecks >= config.failureLimit) {
          r.phase = "rolled-back";
          r.canaryWeight = 0;
          apply(model, r);
          target.log("rollout rolled back", { model, reasons });
          continue;
        }
      } else if (r.canaryWeight >= config.maxWeight) {
        r.phase = "promoted";
        r.canaryWeight = 100;
        apply(model, r);
        target.log("rollout promoted", fields);
        continue;
      } else {
        r.canaryWeight = Math.min(config.maxWeight, r.canaryWeight + config.stepWeight);
        apply(model, r);
        target.log("rollout step passed", { ...fields, next: r.canaryWeight });
      }
      newStep(r);
    }
  }

  const timer = setInterval(tick, 50);
  timer.unref();

  return {
    observe(model, version, code, ttftMs) {
      const r = rollouts.get(model);
      if (r?.phase !== "progressing" || !target.isLeader()) return;
      let s = r.stats.get(version);
      if (s === undefined) {
        s = new StepStats();
        r.stats.set(version, s);
      }
      s.add(code, ttftMs, random);
    },
    state(model) {
      const r = rollouts.get(model);
      return r && { phase: r.phase, canaryWeight: r.canaryWeight, failedChecks: r.failedChecks };
    },
    configure(next) {
      for (const name of [...rollouts.keys()]) if (!next.has(name)) rollouts.delete(name);
      for (const [model, config] of next) {
        const fingerprint = JSON.stringify(config);
        if (rollouts.get(model)?.fingerprint === fingerprint) continue;
        rollouts.set(model, {
          config,
          fingerprint,
          phase: "idle",
          canaryWeight: 0,
          failedChecks: 0,
          stats: new Map(),
          stepStarted: now(),
          writing: false,
          dirty: false,
          resume: true,
          reported: "",
        });
      }
    },
    close() {
      clearInterval(timer);
    },
  };
}
