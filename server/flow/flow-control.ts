/**
 * Flow control: a per-model admission queue between the tenant's limits and the replicas, so that a
 * saturated model holds its requests in the gateway (bounded, prioritised, fair) instead of piling them
 * onto vLLM's own queue, where every request's time to first token grows without bound.
 *
 * - Saturation: a model has a slot for a new request while one of its routable replicas is under the
 *   router's own thresholds (fresh signals: waiting requests and KV-cache usage) and the requests this
 *   gateway has released to the model are fewer than maxInFlightPerReplica per such replica. A share of
 *   that bound (criticalReserve) is kept for critical requests, so that they rarely wait at all: with the
 *   bound at the replica's batch size (vLLM's max_num_seqs), they find a free place in its batch too. And a
 *   replica with more prompt tokens waiting for prefill than one engine step takes (maxPrefillTokens-
 *   PerReplica, this gateway's requests before their first token) takes no non-critical request: prefill
 *   stays short, so a critical request's first token comes within a step or two even under overload.
 * - While the model has slots and nothing waits, a request passes at once (no allocation, no timer).
 *   Otherwise it waits, and waiters are released as slots free (a request ends, a scrape, a replica
 *   appears: `notify`), critical before standard before sheddable.
 * - Order: critical requests first; below critical, the backlogged tenant that has received the least
 *   weighted service goes next, its standard requests before its sheddable ones (virtual token counters:
 *   each dispatch adds its cost, prompt plus max_tokens, over the tenant's weight; a tenant that starts
 *   waiting is lifted to the least counter of those waiting, so idle time earns no credit). A tenant
 *   sending ten times as much gets no more than its share while others wait, and under overload its own
 *   sheddable work is what waits and is shed.
 * - Bounds: waiters per model (maxQueued) and their prompt bytes (maxQueuedBytes); a full queue evicts its
 *   newest waiter of a lower class for a higher one, else refuses the newcomer. A waiter leaves with
 *   RESOURCE_EXHAUSTED (HTTP 429, retry-after) after maxWaitMs or just before its own deadline, and at once
 *   when its client cancels. A request that would wait longer than that anyway (the waiters ahead of it
 *   over the rate at which the saturated model ends requests), or would then not finish before its
 *   deadline (its cost times the model's smoothed service time per token of cost), is refused at once
 *   rather than held to fail later; and a waiter whose deadline is too near to finish is not let through.
 *   Under overload the queue stays as long as the model can serve in time, so what it admits finishes:
 *   goodput holds.
 * - Scale from zero: a model with no routable replica holds requests up to activationTimeoutMs (0: fail at
 *   once with UNAVAILABLE), and the waiting count is exported for KEDA or the HPA to scale on.
 *
 * Time and timers are injected, so that the flow benchmark runs this code in virtual time.
 */
import { Code, type ConnectError } from "@connectrpc/connect";
import { ErrorReason } from "../../gen/es/kinfer/inference/v1/inference_pb.js";
import { gatewayError, noHealthyReplica } from "../errors/gateway-error.js";
import { freshSignals, isEligible, type Replica } from "../replicas/replica.js";
import type { Priority } from "../request/inference-request.js";
import type { ModelEntry } from "../routing/routing-table.js";

/** Classes in the order they are served. */
export const CLASSES: readonly Priority[] = ["critical", "standard", "sheddable"];
const RANK: Record<Priority, number> = { critical: 0, standard: 1, sheddable: 2 };

/** Why a request was refused or sent away by flow control (a metric label). */
export type ShedReason = "queue-full" | "evicted" | "wait-timeout" | "wait-too-long" | "no-replica";

/** The bounds of a model's queue (config `flow`, defaults there). */
export interface FlowLimits {
  readonly maxInFlightPerReplica: number;
  /** A replica with more prompt tokens pending prefill (this gateway's) takes no non-critical request. */
  readonly maxPrefillTokensPerReplica: number;
  /** The share of the in-flight bound kept for critical requests (others stop short of it). */
  readonly criticalReserve: number;
  readonly maxQueued: number;
  readonly maxQueuedBytes: number;
  readonly maxWaitMs: number;
  readonly activationTimeoutMs: number;
}

export interface FlowHooks {
  queued?(model: string, criticality: Priority): void;
  dispatched?(model: string, criticality: Priority, tenant: string, waitMs: number, cost: number): void;
  shed?(model: string, criticality: Priority, reason: ShedReason): void;
}

export interface FlowControllerOptions {
  /** Monotonic ms. */
  readonly now: () => number;
  /** Calls `fn` at time `at` (the same clock); returns a function that cancels it. */
  readonly setTimer: (at: number, fn: () => void) => () => void;
  /** The current entry of a model, for releasing its waiters (the routing table's). */
  readonly model: (name: string) => ModelEntry | undefined;
  /** The limits of a model. */
  readonly limits: (model: string) => FlowLimits;
  readonly hooks?: FlowHooks;
}

/** What flow control needs to know of a request. */
export interface FlowRequest {
  readonly model: ModelEntry;
  readonly criticality: Priority;
  /** The tenant (API key's) it is counted for; "" for anonymous requests. */
  readonly tenant: string;
  /** The tenant's weight (share of a saturated model). */
  readonly weight: number;
  /** Its cost in tokens: prompt (estimated) plus max_tokens. */
  readonly cost: number;
  /** Bytes it holds while waiting (its prompt). */
  readonly bytes: number;
  /** When its client gives up (monotonic ms), if known. */
  readonly deadlineAt: number | undefined;
  readonly signal: AbortSignal;
}

/** A request let through; `release` once, when it ends. */
export interface FlowTicket {
  release(): void;
}

/** The view of one model's queue (admin API, metrics). */
export interface QueueState {
  readonly model: string;
  /** Requests let through and not yet ended. */
  readonly active: number;
  /** Slots for new requests now (0 when saturated). */
  readonly slots: number;
  readonly queued: Readonly<Record<Priority, number>>;
  readonly queuedBytes: number;
  /** How long the oldest waiter has waited, ms (0 with none). */
  readonly oldestWaitMs: number;
  readonly tenants: readonly { tenant: string; queued: number; virtualTokens: number }[];
}

export interface FlowController {
  /** Lets the request through (at once or once a slot frees) or throws/rejects with a ConnectError. */
  acquire(req: FlowRequest): FlowTicket | Promise<FlowTicket>;
  /** Something changed that may free slots (a scrape, replicas, a weight): release what can go. */
  notify(model?: string): void;
  snapshot(): QueueState[];
  /** Rejects every waiter (shutdown) and stops timers. */
  close(reason: ConnectError): void;
}

interface Waiter {
  readonly req: FlowRequest;
  readonly enqueuedAt: number;
  readonly seq: number;
  resolve(ticket: FlowTicket): void;
  reject(err: ConnectError): void;
  cancelTimer(): void;
  detach(): void;
}

interface ModelFlow {
  readonly name: string;
  active: number;
  /** When the last requests ended while others waited (the model's service rate when saturated). */
  readonly endings: number[];
  /** Smoothed time from letting a request through to its end, per token of its cost, ms (0 until one ended). */
  msPerCost: number;
  bytes: number;
  count: number;
  /** Waiters by class, then by tenant, oldest first. */
  readonly queues: Map<string, Waiter[]>[];
  /** Virtual token counter per tenant. */
  readonly counters: Map<string, number>;
  /** A periodic re-check while waiters remain (signals go stale, replicas come back). */
  cancelTick: (() => void) | undefined;
}

/** Re-check saturated models this often while requests wait, besides the events that free slots. */
const TICK_MS = 50;

/**
 * Replicas a new request may go to now; of those, the ones under the router's thresholds (critical
 * requests may use these), and of those the ones whose pending prefill is also under its bound (others).
 */
function replicaCapacity(
  model: ModelEntry,
  now: number,
  maxPrefillTokens: number,
): { routable: number; unsaturated: number; open: number } {
  let routable = 0;
  let unsaturated = 0;
  let open = 0;
  const p = model.policy;
  for (const v of model.versions) {
    if (v.weight <= 0) continue;
    for (const r of v.replicas as Replica[]) {
      if (!isEligible(r, now)) continue;
      routable++;
      const s = freshSignals(r, now, p.signalMaxAgeMs);
      const saturated =
        s !== undefined &&
        (s.waiting + r.sentSinceScrape > p.queueThreshold || s.kvCacheUsage > p.kvCacheThreshold);
      if (saturated) continue;
      unsaturated++;
      if (r.prefillTokens <= maxPrefillTokens) open++;
    }
  }
  return { routable, unsaturated, open };
}

export function createFlowController(options: FlowControllerOptions): FlowController {
  const flows = new Map<string, ModelFlow>();
  let seq = 0;
  let closed = false;

  const flowOf = (name: string): ModelFlow => {
    let f = flows.get(name);
    if (f === undefined) {
      f = {
        name,
        active: 0,
        endings: [],
        msPerCost: 0,
        bytes: 0,
        count: 0,
        queues: CLASSES.map(() => new Map()),
        counters: new Map(),
        cancelTick: undefined,
      };
      flows.set(name, f);
    }
    return f;
  };

  /** Slots for standard and sheddable requests, and for critical ones (which may use the reserve). */
  function slotsOf(
    f: ModelFlow,
    model: ModelEntry | undefined,
  ): { routable: number; slots: number; criticalSlots: number } {
    if (model === undefined) return { routable: 0, slots: 0, criticalSlots: 0 };
    const limits = options.limits(f.name);
    const { routable, unsaturated, open } = replicaCapacity(
      model,
      options.now(),
      limits.maxPrefillTokensPerReplica,
    );
    const bound = unsaturated * limits.maxInFlightPerReplica;
    const reserve = Math.ceil(bound * limits.criticalReserve);
    return {
      routable,
      slots:
        open === 0
          ? 0
          : Math.max(0, Math.min(bound - reserve, open * limits.maxInFlightPerReplica) - f.active),
      criticalSlots: Math.max(0, bound - f.active),
    };
  }

  function ticket(f: ModelFlow, cost: number): FlowTicket {
    f.active++;
    const since = options.now();
    let released = false;
    return {
      release() {
        if (released) return;
        released = true;
        f.active--;
        const now = options.now();
        const perCost = (now - since) / Math.max(1, cost);
        f.msPerCost = f.msPerCost === 0 ? perCost : f.msPerCost + SERVICE_ALPHA * (perCost - f.msPerCost);
        if (f.count > 0) {
          f.endings.push(now);
          if (f.endings.length > RATE_SAMPLES) f.endings.shift();
          dispatch(f);
        }
      },
    };
  }

  /**
   * Requests per ms the model takes while saturated: the last RATE_SAMPLES endings while others waited.
   * Undefined until there are enough, or when the last one is old (the model may have changed since).
   */
  function serviceRate(f: ModelFlow, now: number): number | undefined {
    const e = f.endings;
    if (e.length < MIN_RATE_SAMPLES) return undefined;
    const first = e[0] as number;
    const last = e.at(-1) as number;
    if (last <= first || now - last > 4 * (last - first)) return undefined;
    return (e.length - 1) / (last - first);
  }

  /** Waiters that would be served before a newcomer of class `c`. */
  function ahead(f: ModelFlow, c: Priority, tenant: string): number {
    const critical = [...(f.queues[0] as Map<string, Waiter[]>).values()].reduce((n, l) => n + l.length, 0);
    if (c === "critical") return critical;
    // Below critical, tenants take turns: before a newcomer's turn each backlogged tenant is served about
    // as many requests as the newcomer's tenant has waiting ahead of it (its own standard ones first).
    const own = (RANK[c] >= 1 ? queuedIn(f, 1, tenant) : 0) + (RANK[c] >= 2 ? queuedIn(f, 2, tenant) : 0);
    let n = critical + own;
    for (const other of backloggedTenants(f)) {
      if (other === tenant) continue;
      n += Math.min(queuedIn(f, 1, other) + queuedIn(f, 2, other), own + 1);
    }
    return n;
  }

  /** The least virtual counter among tenants waiting in any class (the lift for a newcomer). */
  function leastWaitingCounter(f: ModelFlow): number | undefined {
    let least: number | undefined;
    for (const byTenant of f.queues)
      for (const tenant of byTenant.keys()) {
        const c = f.counters.get(tenant) ?? 0;
        if (least === undefined || c < least) least = c;
      }
    return least;
  }

  function remove(f: ModelFlow, w: Waiter): void {
    const byTenant = f.queues[RANK[w.req.criticality]] as Map<string, Waiter[]>;
    const list = byTenant.get(w.req.tenant);
    if (list === undefined) return;
    const i = list.indexOf(w);
    if (i === -1) return;
    list.splice(i, 1);
    if (list.length === 0) byTenant.delete(w.req.tenant);
    f.count--;
    f.bytes -= w.req.bytes;
    w.cancelTimer();
    w.detach();
    if (f.count === 0) {
      f.cancelTick?.();
      f.cancelTick = undefined;
    }
  }

  /**
   * The next waiter. Critical requests go first, whoever sends them (the tenant with the least counter
   * among them). Below critical, fairness comes before class: the backlogged tenant with the least
   * counter is next, and within its requests, standard before sheddable, oldest first. So a tenant below
   * its share is served in full, while the one above it sees its sheddable work wait, and go, first.
   */
  function next(f: ModelFlow): Waiter | undefined {
    const critical = leastCounterHead(f, [f.queues[0] as Map<string, Waiter[]>]);
    if (critical !== undefined) return critical;
    return leastCounterHead(f, [f.queues[1] as Map<string, Waiter[]>, f.queues[2] as Map<string, Waiter[]>]);
  }

  /** Of the tenants waiting in `classes`, the one with the least counter; its head in the first class it has. */
  function leastCounterHead(f: ModelFlow, classes: Map<string, Waiter[]>[]): Waiter | undefined {
    let best: Waiter | undefined;
    let bestCounter = Number.POSITIVE_INFINITY;
    for (const byTenant of classes)
      for (const tenant of byTenant.keys()) {
        const c = f.counters.get(tenant) ?? 0;
        if (c > bestCounter) continue;
        let head: Waiter | undefined;
        for (const q of classes) {
          head = q.get(tenant)?.[0];
          if (head !== undefined) break;
        }
        if (head === undefined) continue;
        if (c < bestCounter || (best !== undefined && head.seq < best.seq)) {
          best = head;
          bestCounter = c;
        }
      }
    return best;
  }

  function dispatch(f: ModelFlow): void {
    if (closed) return;
    const model = options.model(f.name);
    const { routable, slots, criticalSlots } = slotsOf(f, model);
    let [free, freeCritical] = [slots, criticalSlots];
    const now = options.now();
    while (f.count > 0 && routable > 0) {
      const w = next(f) as Waiter;
      if ((w.req.criticality === "critical" ? freeCritical : free) <= 0) break;
      // One that cannot finish before its client gives up would only take the place of one that can.
      if (
        w.req.deadlineAt !== undefined &&
        f.msPerCost > 0 &&
        now + f.msPerCost * w.req.cost > w.req.deadlineAt
      ) {
        refuse(f, w, "wait-too-long");
        continue;
      }
      remove(f, w);
      const r = w.req;
      f.counters.set(r.tenant, (f.counters.get(r.tenant) ?? 0) + r.cost / Math.max(r.weight, 1e-6));
      options.hooks?.dispatched?.(f.name, r.criticality, r.tenant, now - w.enqueuedAt, r.cost);
      w.resolve(ticket(f, r.cost));
      free--;
      freeCritical--;
    }
  }

  function refuse(f: ModelFlow, w: Waiter, reason: ShedReason): void {
    remove(f, w);
    options.hooks?.shed?.(f.name, w.req.criticality, reason);
    w.reject(shedError(reason, options.limits(f.name)));
  }

  /** Keeps a model's waiters moving even when no event frees a slot (signals go stale, replicas return). */
  function tick(f: ModelFlow): void {
    if (f.cancelTick !== undefined || f.count === 0 || closed) return;
    f.cancelTick = options.setTimer(options.now() + TICK_MS, () => {
      f.cancelTick = undefined;
      dispatch(f);
      tick(f);
    });
  }

  return {
    acquire(req) {
      const f = flowOf(req.model.name);
      const limits = options.limits(f.name);
      const { routable, slots, criticalSlots } = slotsOf(f, req.model);
      const critical = req.criticality === "critical";
      // Critical requests pass waiting non-critical ones, and may use the reserve.
      const noneAhead = f.count === 0 || (critical && (f.queues[0] as Map<string, Waiter[]>).size === 0);
      if (noneAhead && (critical ? criticalSlots : slots) > 0) {
        options.hooks?.dispatched?.(f.name, req.criticality, req.tenant, 0, req.cost);
        f.counters.set(req.tenant, (f.counters.get(req.tenant) ?? 0) + req.cost / Math.max(req.weight, 1e-6));
        return ticket(f, req.cost);
      }
      if (routable === 0 && limits.activationTimeoutMs === 0) {
        options.hooks?.shed?.(f.name, req.criticality, "no-replica");
        throw noHealthyReplica(f.name);
      }
      if (req.signal.aborted) throw req.signal.reason;
      // Room: evict the newest waiter of a lower class if the queue is full, else refuse the newcomer.
      while (f.count >= limits.maxQueued || (f.count > 0 && f.bytes + req.bytes > limits.maxQueuedBytes)) {
        const victim = newestBelow(f, req.criticality);
        if (victim === undefined) {
          options.hooks?.shed?.(f.name, req.criticality, "queue-full");
          throw shedError("queue-full", limits);
        }
        refuse(f, victim, "evicted");
      }
      const now = options.now();
      const waitMs = routable === 0 ? limits.activationTimeoutMs : limits.maxWaitMs;
      // Leave just before the client's own deadline, so that it hears why.
      const leaveAt = Math.min(
        now + waitMs,
        (req.deadlineAt ?? Number.POSITIVE_INFINITY) - DEADLINE_MARGIN_MS,
      );
      // Refuse now what would wait past its limit, or be let through too late to finish in time.
      const rate = routable > 0 ? serviceRate(f, now) : undefined;
      if (rate !== undefined) {
        const wait = (ahead(f, req.criticality, req.tenant) + 1) / rate;
        const finishAt = now + wait + f.msPerCost * req.cost;
        if (wait > leaveAt - now || (req.deadlineAt !== undefined && finishAt > req.deadlineAt)) {
          options.hooks?.shed?.(f.name, req.criticality, "wait-too-long");
          throw shedError("wait-too-long", limits);
        }
      }
      return new Promise<FlowTicket>((resolve, reject) => {
        const lift = leastWaitingCounter(f);
        const byTenant = f.queues[RANK[req.criticality]] as Map<string, Waiter[]>;
        if (lift !== undefined && !queuedAnywhere(f, req.tenant))
          f.counters.set(req.tenant, Math.max(f.counters.get(req.tenant) ?? 0, lift));
        const waitMs = routable === 0 ? limits.activationTimeoutMs : limits.maxWaitMs;
        // Leave just before the client's own deadline, so that it hears why.
        const leaveAt = Math.min(
          now + waitMs,
          (req.deadlineAt ?? Number.POSITIVE_INFINITY) - DEADLINE_MARGIN_MS,
        );
        const onAbort = () => {
          remove(f, w);
          reject(req.signal.reason);
        };
        const w: Waiter = {
          req,
          enqueuedAt: now,
          seq: seq++,
          resolve,
          reject,
          cancelTimer: options.setTimer(leaveAt, () => {
            const reason: ShedReason =
              options.model(f.name) !== undefined && slotsOf(f, options.model(f.name)).routable === 0
                ? "no-replica"
                : "wait-timeout";
            refuse(f, w, reason);
          }),
          detach: () => req.signal.removeEventListener("abort", onAbort),
        };
        req.signal.addEventListener("abort", onAbort, { once: true });
        const list = byTenant.get(req.tenant);
        if (list === undefined) byTenant.set(req.tenant, [w]);
        else list.push(w);
        f.count++;
        f.bytes += req.bytes;
        options.hooks?.queued?.(f.name, req.criticality);
        tick(f);
        dispatch(f);
      });
    },
    notify(model) {
      if (model !== undefined) {
        const f = flows.get(model);
        if (f !== undefined && f.count > 0) dispatch(f);
        return;
      }
      for (const f of flows.values()) if (f.count > 0) dispatch(f);
    },
    snapshot() {
      const now = options.now();
      return [...flows.values()].map((f) => {
        const queued = { critical: 0, standard: 0, sheddable: 0 } as Record<Priority, number>;
        let oldest = now;
        const tenants = new Map<string, number>();
        for (const [i, byTenant] of f.queues.entries())
          for (const [tenant, list] of byTenant) {
            queued[CLASSES[i] as Priority] += list.length;
            tenants.set(tenant, (tenants.get(tenant) ?? 0) + list.length);
            for (const w of list) oldest = Math.min(oldest, w.enqueuedAt);
          }
        return {
          model: f.name,
          active: f.active,
          slots: slotsOf(f, options.model(f.name)).slots,
          queued,
          queuedBytes: f.bytes,
          oldestWaitMs: now - oldest,
          tenants: [...f.counters].map(([tenant, virtualTokens]) => ({
            tenant,
            queued: tenants.get(tenant) ?? 0,
            virtualTokens,
          })),
        };
      });
    },
    close(reason) {
      closed = true;
      for (const f of flows.values()) {
        for (const byTenant of f.queues)
          for (const list of byTenant.values())
            for (const w of [...list]) {
              remove(f, w);
              w.reject(reason);
            }
        f.cancelTick?.();
      }
    },
  };
}

/** The client hears the queue's answer this long before its own deadline would cut the call. */
const DEADLINE_MARGIN_MS = 50;
/** Endings kept for a saturated model's service rate, and the fewest that give an estimate. */
const RATE_SAMPLES = 64;
const MIN_RATE_SAMPLES = 8;
/** Weight of a new request's time in the smoothed service time per token. */
const SERVICE_ALPHA = 0.05;

function queuedAnywhere(f: ModelFlow, tenant: string): boolean {
  return f.queues.some((byTenant) => byTenant.has(tenant));
}

function queuedIn(f: ModelFlow, rank: number, tenant: string): number {
  return (f.queues[rank] as Map<string, Waiter[]>).get(tenant)?.length ?? 0;
}

/** Tenants with standard or sheddable requests waiting. */
function backloggedTenants(f: ModelFlow): Set<string> {
  return new Set([
    ...(f.queues[1] as Map<string, Waiter[]>).keys(),
    ...(f.queues[2] as Map<string, Waiter[]>).keys(),
  ]);
}

/** The newest waiter of a class below `than`, lowest class first. */
function newestBelow(f: ModelFlow, than: Priority): Waiter | undefined {
  for (let rank = CLASSES.length - 1; rank > RANK[than]; rank--) {
    let newest: Waiter | undefined;
    for (const list of (f.queues[rank] as Map<string, Waiter[]>).values()) {
      const last = list.at(-1);
      if (last !== undefined && (newest === undefined || last.seq > newest.seq)) newest = last;
    }
    if (newest !== undefined) return newest;
  }
  return undefined;
}

function shedError(reason: ShedReason, limits: FlowLimits): ConnectError {
  switch (reason) {
    case "no-replica":
      return gatewayError(
        Code.Unavailable,
        ErrorReason.NO_HEALTHY_REPLICA,
        "the model has no ready replica; it may be starting",
        Math.max(1000, limits.activationTimeoutMs),
      );
    case "evicted":
      return gatewayError(
        Code.ResourceExhausted,
        ErrorReason.OVERLOADED,
        "the model is at capacity: a more important request took this one's place",
        1000,
      );
    case "queue-full":
      return gatewayError(
        Code.ResourceExhausted,
        ErrorReason.OVERLOADED,
        "the model is at capacity and its queue is full",
        1000,
      );
    case "wait-timeout":
      return gatewayError(
        Code.ResourceExhausted,
        ErrorReason.OVERLOADED,
        "the model stayed at capacity for as long as the request could wait",
        1000,
      );
    case "wait-too-long":
      return gatewayError(
        Code.ResourceExhausted,
        ErrorReason.OVERLOADED,
        "the model is at capacity and could not take the request in time",
        1000,
      );
  }
}
