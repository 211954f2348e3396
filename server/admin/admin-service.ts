/**
 * kinfer.admin.v1.AdminService: what operators change and watch. Models with their versions, weights,
 * replicas and live signals; traffic splits (validated, applied atomically to the routing table); drain and
 * undrain; routing policies; a watch stream of state changes. Changes are written to the control state
 * (server/control/), which every gateway replica applies to its routing table; a change returns once it is
 * stored and applied here, and with expected_state_version it is made only over that version. It never
 * touches the request path itself. API keys are created, listed and revoked in the key
 * store (server/tenants/key-store.ts); without one configured, those calls fail with FAILED_PRECONDITION.
 * ListQueues shows flow control's queues (server/flow/flow-control.ts). LoadAdapter and UnloadAdapter
 * manage a model's LoRA adapters on its replicas (lora-adapters.ts).
 */
import type { MessageInitShape } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type ConnectRouter } from "@connectrpc/connect";
import {
  AdminService,
  type ApiKeySchema,
  ChangeType,
  type ModelSchema,
  ReplicaState,
  RoutingAlgorithm,
  type RoutingPolicy,
  type RoutingPolicySchema,
} from "../../gen/es/kinfer/admin/v1/admin_pb.js";
import { Priority } from "../../gen/es/kinfer/inference/v1/inference_pb.js";
import { type RoutingPolicyConfig, routingPolicySchema } from "../config/gateway-config.js";
import { type ControlStore, MAX_WEIGHT, type ModelControl } from "../control/control-state.js";
import type { QueueState } from "../flow/flow-control.js";
import { freshSignals, type Replica, replicaStatus } from "../replicas/replica.js";
import type { ModelEntry, RoutingTable } from "../routing/routing-table.js";
import { type ApiKeyRecord, type KeyStore, KeyStoreError } from "../tenants/key-store.js";
import { loadAdapter, unloadAdapter } from "./lora-adapters.js";

/** An adapter's name: what clients put in their requests' model field. */
function checkAdapter(name: string): void {
  if (!/^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,255}$/.test(name))
    throw new ConnectError(
      "adapter must be 1 to 256 letters, digits and . _ : / @ - (starting with a letter or digit)",
      Code.InvalidArgument,
    );
}

const ALGORITHMS: Record<RoutingPolicyConfig["algorithm"], RoutingAlgorithm> = {
  "round-robin": RoutingAlgorithm.ROUND_ROBIN,
  "least-outstanding": RoutingAlgorithm.LEAST_OUTSTANDING,
  "power-of-two-choices": RoutingAlgorithm.POWER_OF_TWO_CHOICES,
  "resource-aware": RoutingAlgorithm.RESOURCE_AWARE,
  "prefix-aware": RoutingAlgorithm.PREFIX_AWARE,
};
const STATES = {
  ready: ReplicaState.READY,
  draining: ReplicaState.DRAINING,
  unhealthy: ReplicaState.UNHEALTHY,
  ejected: ReplicaState.EJECTED,
};
const PRIORITY_TO_PROTO: Record<ApiKeyRecord["priority"], Priority> = {
  critical: Priority.CRITICAL,
  standard: Priority.STANDARD,
  sheddable: Priority.SHEDDABLE,
};
const PRIORITY_FROM_PROTO: Partial<Record<Priority, ApiKeyRecord["priority"]>> = {
  [Priority.CRITICAL]: "critical",
  [Priority.STANDARD]: "standard",
  [Priority.SHEDDABLE]: "sheddable",
};

export interface AdminServiceDeps {
  readonly table: RoutingTable;
  /** Where changes are written (and read back by every gateway replica). */
  readonly control: ControlStore;
  /** Monotonic ms (replica timestamps are on this clock). */
  readonly now: () => number;
  /** Tenants' API keys, when configured. */
  readonly keys?: KeyStore | undefined;
  /** Flow control's queues (ListQueues). */
  readonly queues: () => readonly QueueState[];
}

const MAX_LIMIT = 1e12;

/** The admin view of a key (never its secret or hash). */
function keyToProto(k: ApiKeyRecord): MessageInitShape<typeof ApiKeySchema> {
  return {
    id: k.id,
    tenant: k.tenant,
    secretPrefix: k.secretPrefix,
    allowedModels: k.allowedModels,
    limits: {
      requestsPerMinute: k.limits.requestsPerMinute,
      tokensPerMinute: BigInt(k.limits.tokensPerMinute),
      maxConcurrentStreams: k.limits.maxConcurrentStreams,
    },
    ...(k.createdAt !== undefined ? { createdAt: timestampFromMs(Date.parse(k.createdAt)) } : {}),
    ...(k.revokedAt !== undefined ? { revokedAt: timestampFromMs(Date.parse(k.revokedAt)) } : {}),
    priority: PRIORITY_TO_PROTO[k.priority],
    weight: k.weight,
  };
}

/** KeyStoreErrors as admin API errors. */
async function keyStoreCall<T>(fn: () => T | Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof KeyStoreError) {
      const code = {
        invalid: Code.InvalidArgument,
        "read-only": Code.FailedPrecondition,
        "not-found": Code.NotFound,
        unavailable: Code.Unavailable,
      }[err.kind];
      throw new ConnectError(err.message, code);
    }
    throw err;
  }
}

/** The admin view of a policy. */
export function policyToProto(p: RoutingPolicyConfig): MessageInitShape<typeof RoutingPolicySchema> {
  return {
    algorithm: ALGORITHMS[p.algorithm],
    weights: { queue: p.weights.queue, kvCache: p.weights.kvCache, prefix: p.weights.prefix },
    queueThreshold: p.queueThreshold,
    kvCacheThreshold: p.kvCacheThreshold,
    signalMaxAge: durationFromMs(p.signalMaxAgeMs),
    affinityLoadFactor: p.affinityLoadFactor,
    sessionAffinity: p.sessionAffinity,
  };
}

/** A policy from the admin API: unset fields (0, UNSPECIFIED) keep their defaults; bad values are INVALID_ARGUMENT. */
export function policyFromProto(
  p: RoutingPolicy | undefined,
  current: RoutingPolicyConfig,
): RoutingPolicyConfig {
  if (p === undefined) throw new ConnectError("policy is required", Code.InvalidArgument);
  const algorithm = (Object.entries(ALGORITHMS).find(([, v]) => v === p.algorithm)?.[0] ??
    current.algorithm) as RoutingPolicyConfig["algorithm"];
  const result = routingPolicySchema.safeParse({
    algorithm,
    weights: p.weights ?? current.weights,
    queueThreshold: p.queueThreshold || current.queueThreshold,
    kvCacheThreshold: p.kvCacheThreshold || current.kvCacheThreshold,
    signalMaxAgeMs:
      p.signalMaxAge !== undefined
        ? Number(p.signalMaxAge.seconds) * 1000 + Math.round(p.signalMaxAge.nanos / 1e6)
        : current.signalMaxAgeMs,
    affinityLoadFactor: p.affinityLoadFactor || current.affinityLoadFactor,
    sessionAffinity: p.sessionAffinity,
  });
  if (!result.success) {
    throw new ConnectError(
      `invalid policy: ${result.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`).join("; ")}`,
      Code.InvalidArgument,
    );
  }
  return result.data;
}

function replicaToProto(r: Replica, now: number) {
  const s = r.signals;
  return {
    id: r.id,
    url: r.url,
    state: STATES[replicaStatus(r, now)],
    source: r.source,
    signals: {
      inFlight: r.inFlight,
      numRequestsWaiting: s?.waiting ?? 0,
      numRequestsRunning: s?.running ?? 0,
      kvCacheUsage: s?.kvCacheUsage ?? 0,
      // Replica times are monotonic: convert to wall-clock time, in whole milliseconds.
      ...(s !== undefined
        ? { scrapedAt: timestampFromMs(Math.round(Date.now() - (now - s.scrapedAt))) }
        : {}),
      stale: freshSignals(r, now, 200) === undefined,
      consecutiveFailures: r.consecutiveFailures,
    },
  };
}

export function modelToProto(
  m: ModelEntry,
  now: number,
  stateVersion = "",
): MessageInitShape<typeof ModelSchema> {
  return {
    name: m.name,
    stateVersion,
    routingPolicy: policyToProto(m.policy),
    versions: m.versions.map((v) => ({
      name: v.name,
      weight: v.weight,
      replicas: v.replicas.map((r) => replicaToProto(r, now)),
    })),
  };
}

export function registerAdminService(router: ConnectRouter, deps: AdminServiceDeps): void {
  const { table, now, control } = deps;
  const toProto = (m: ModelEntry) => modelToProto(m, now(), control.snapshot().get(m.name)?.version ?? "");
  /** Writes one model's control state; resolves once it is applied to this gateway's table. */
  const change = (name: string, fn: (c: ModelControl) => ModelControl, expected = "") =>
    control.update(name, fn, expected === "" ? undefined : expected);
  const model = (name: string) => {
    const m = table.model(name);
    if (m === undefined) throw new ConnectError(`model "${name}" is not served here`, Code.NotFound);
    return m;
  };
  const replica = (id: string) => {
    const r = table.replicas().find((x) => x.id === id);
    if (r === undefined) throw new ConnectError(`replica "${id}" is not known`, Code.NotFound);
    return r;
  };
  const keyStore = () => {
    if (deps.keys === undefined)
      throw new ConnectError("API keys are not configured (tenants.keysFile)", Code.FailedPrecondition);
    return deps.keys;
  };

  router.service(AdminService, {
    listModels: () => ({ models: table.models().map(toProto) }),
    getModel: (req) => ({ model: toProto(model(req.model)) }),
    async setTrafficSplit(req) {
      const m = model(req.model);
      const weights = new Map<string, number>();
      for (const w of req.weights) {
        if (!m.versions.some((v) => v.name === w.version)) {
          throw new ConnectError(`model "${m.name}" has no version "${w.version}"`, Code.InvalidArgument);
        }
        if (weights.has(w.version))
          throw new ConnectError(`version "${w.version}" is named twice`, Code.InvalidArgument);
        if (w.weight > MAX_WEIGHT)
          throw new ConnectError(`weights are at most ${MAX_WEIGHT}`, Code.InvalidArgument);
        weights.set(w.version, w.weight);
      }
      for (const v of m.versions) if (!weights.has(v.name)) weights.set(v.name, 0);
      if ([...weights.values()].every((w) => w === 0)) {
        throw new ConnectError("at least one weight must be positive", Code.InvalidArgument);
      }
      // One swap of the table once stored: requests see the old split or the new one.
      await change(m.name, (c) => ({ ...c, weights: Object.fromEntries(weights) }), req.expectedStateVersion);
      return { model: toProto(model(m.name)) };
    },
    async drainReplica(req) {
      const r = replica(req.replicaId);
      await change(r.model, (c) => ({ ...c, drained: [...new Set([...c.drained, r.id])] }));
      return { replica: replicaToProto(replica(r.id), now()) };
    },
    async undrainReplica(req) {
      const r = replica(req.replicaId);
      await change(r.model, (c) => ({ ...c, drained: c.drained.filter((id) => id !== r.id) }));
      return { replica: replicaToProto(replica(r.id), now()) };
    },
    async loadAdapter(req) {
      const m = model(req.model);
      checkAdapter(req.adapter);
      if (table.model(req.adapter) !== undefined)
        throw new ConnectError(`"${req.adapter}" is a model's name`, Code.InvalidArgument);
      const owner = table.modelOfAdapter(req.adapter);
      if (owner !== undefined && owner.name !== m.name)
        throw new ConnectError(
          `adapter "${req.adapter}" belongs to model "${owner.name}"`,
          Code.AlreadyExists,
        );
      if (req.path.length === 0 || req.path.length > 4096)
        throw new ConnectError("path must be 1 to 4096 characters", Code.InvalidArgument);
      return { replicas: await loadAdapter(m, req.adapter, req.path) };
    },
    async unloadAdapter(req) {
      const m = model(req.model);
      checkAdapter(req.adapter);
      return { replicas: await unloadAdapter(m, req.adapter) };
    },
    getRoutingPolicy: (req) => ({ policy: policyToProto(model(req.model).policy) }),
    async setRoutingPolicy(req) {
      const m = model(req.model);
      const policy = policyFromProto(req.policy, m.policy);
      await change(m.name, (c) => ({ ...c, policy }), req.expectedStateVersion);
      return { policy: policyToProto(policy) };
    },
    async *watchState(req, ctx) {
      const wanted = new Set(req.models);
      const interval = req.minInterval
        ? Math.max(50, Number(req.minInterval.seconds) * 1000 + req.minInterval.nanos / 1e6)
        : 1000;
      // Polls the table and compares each model's state: every change shows (drains, health, weights,
      // replicas, signals), coalesced to one update per model per interval.
      let last = new Map<string, string>();
      let first = true;
      while (!ctx.signal.aborted) {
        const models = table.models().filter((m) => wanted.size === 0 || wanted.has(m.name));
        const next = new Map<string, string>();
        for (const m of models) {
          const proto = toProto(m);
          const key = JSON.stringify(proto, (k, v) =>
            k === "scrapedAt" || k === "stale" || typeof v === "bigint" ? undefined : v,
          );
          next.set(m.name, key);
          const before = last.get(m.name);
          if (first || before !== key) {
            yield {
              type: first
                ? ChangeType.SNAPSHOT
                : before === undefined
                  ? ChangeType.ADDED
                  : ChangeType.UPDATED,
              model: proto,
              observedAt: timestampFromMs(Date.now()),
            };
          }
        }
        for (const name of last.keys()) {
          if (!next.has(name))
            yield { type: ChangeType.REMOVED, model: { name }, observedAt: timestampFromMs(Date.now()) };
        }
        last = next;
        first = false;
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, interval);
          ctx.signal.addEventListener(
            "abort",
            () => {
              clearTimeout(timer);
              resolve();
            },
            { once: true },
          );
        });
      }
    },
    async createApiKey(req) {
      const store = keyStore();
      if (req.tenant === "") throw new ConnectError("tenant is required", Code.InvalidArgument);
      // A model's name (it and its adapters) or a LoRA adapter's known here (that adapter only).
      for (const m of req.allowedModels) {
        if (table.model(m) === undefined && table.modelOfAdapter(m) === undefined)
          throw new ConnectError(`model or adapter "${m}" is not served here`, Code.InvalidArgument);
      }
      const tokensPerMinute = Number(req.limits?.tokensPerMinute ?? 0n);
      if (tokensPerMinute > MAX_LIMIT)
        throw new ConnectError(`tokens_per_minute must be at most ${MAX_LIMIT}`, Code.InvalidArgument);
      if (!Number.isFinite(req.weight) || req.weight < 0 || req.weight > 1000)
        throw new ConnectError("weight must be between 0 (meaning 1) and 1000", Code.InvalidArgument);
      const priority = PRIORITY_FROM_PROTO[req.priority];
      if (priority === undefined && req.priority !== Priority.UNSPECIFIED)
        throw new ConnectError(`unknown priority ${req.priority}`, Code.InvalidArgument);
      const { record, secret } = await keyStoreCall(() =>
        store.create({
          tenant: req.tenant,
          allowedModels: req.allowedModels,
          ...(priority !== undefined ? { priority } : {}),
          ...(req.weight > 0 ? { weight: req.weight } : {}),
          limits: {
            requestsPerMinute: req.limits?.requestsPerMinute ?? 0,
            tokensPerMinute,
            maxConcurrentStreams: req.limits?.maxConcurrentStreams ?? 0,
          },
        }),
      );
      return { key: keyToProto(record), secret };
    },
    listApiKeys: (req) => ({
      keys: keyStore().list({ tenant: req.tenant, includeRevoked: req.includeRevoked }).map(keyToProto),
    }),
    async revokeApiKey(req) {
      const store = keyStore();
      return { key: keyToProto(await keyStoreCall(() => store.revoke(req.id))) };
    },
    listQueues(req) {
      const queues = deps
        .queues()
        .filter((q) => req.model === "" || q.model === req.model)
        .sort((a, b) => a.model.localeCompare(b.model));
      return {
        queues: queues.map((q) => ({
          model: q.model,
          active: q.active,
          slots: Math.min(q.slots, 2 ** 32 - 1),
          queued: q.queued,
          queuedBytes: BigInt(q.queuedBytes),
          oldestWait: durationFromMs(Math.round(q.oldestWaitMs)),
          tenants: q.tenants.map((t) => ({
            tenant: t.tenant,
            queued: t.queued,
            virtualTokens: t.virtualTokens,
          })),
        })),
      };
    },
  });
}
