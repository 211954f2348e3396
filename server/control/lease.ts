/**
 * Leader election among gateway replicas with a coordination.k8s.io Lease, as client-go's leaderelection
 * does it (client-node has none): a candidate takes the Lease when it is free or its holder has not renewed
 * it for `leaseDurationMs` (timed by this candidate's own clock from when it last saw the Lease change, so
 * clocks need not agree), renews it every `retryPeriodMs`, and stops leading if it could not renew within
 * `renewDeadlineMs`. Every write carries the Lease's resourceVersion, so two candidates cannot both take it.
 * On close, a leader releases the Lease so that another takes over at once rather than after it expires.
 *
 * Used for the built-in rollout: one gateway at a time judges and advances it (server/rollout/rollout.ts).
 * Without a cluster there is one gateway, and `alwaysLeader` stands in.
 */
import {
  ApiException,
  CoordinationV1Api,
  type KubeConfig,
  type V1Lease,
  V1MicroTime,
} from "@kubernetes/client-node";

export interface LeaderElector {
  /** Whether this process leads now. */
  isLeader(): boolean;
  /** Calls back when leadership is gained or lost. */
  onChange(listener: (leading: boolean) => void): void;
  /** Stops campaigning; a leader releases the Lease. */
  close(): Promise<void>;
}

export function alwaysLeader(): LeaderElector {
  return { isLeader: () => true, onChange() {}, close: async () => {} };
}

export interface LeaseOptions {
  namespace: string;
  name: string;
  /** This candidate's name in the Lease (the pod name). */
  identity: string;
  /** Default 15 s, 10 s and 2 s, client-go's defaults. */
  leaseDurationMs?: number;
  renewDeadlineMs?: number;
  retryPeriodMs?: number;
  log?: (message: string, fields?: Record<string, unknown>) => void;
}

/** The Lease's times: MicroTime, serialized with microseconds as the API requires. */
const microTime = (ms: number) => new V1MicroTime(ms);

export function createLeaseElector(kc: KubeConfig, options: LeaseOptions): LeaderElector {
  const api = kc.makeApiClient(CoordinationV1Api);
  const { namespace, name, identity } = options;
  const leaseDurationMs = options.leaseDurationMs ?? 15_000;
  const renewDeadlineMs = options.renewDeadlineMs ?? 10_000;
  const retryPeriodMs = options.retryPeriodMs ?? 2000;
  const log = options.log ?? (() => {});
  const listeners: ((leading: boolean) => void)[] = [];
  let leading = false;
  let lastRenewed = 0;
  /** The Lease as last seen, and when (by our clock) its record last changed. */
  let observed: { holder: string; renewTime: string; at: number } | undefined;
  let closed = false;
  let timer: NodeJS.Timeout | undefined;

  const setLeading = (next: boolean) => {
    if (next === leading) return;
    leading = next;
    log(next ? "became the leader" : "stopped leading", { lease: `${namespace}/${name}`, identity });
    for (const l of listeners) l(next);
  };

  const spec = (transitions: number, acquireTime: number, now: number) => ({
    holderIdentity: identity,
    leaseDurationSeconds: Math.ceil(leaseDurationMs / 1000),
    acquireTime: microTime(acquireTime),
    renewTime: microTime(now),
    leaseTransitions: transitions,
  });

  async function attempt(): Promise<void> {
    const now = Date.now();
    let lease: V1Lease | undefined;
    try {
      lease = await api.readNamespacedLease({ name, namespace });
    } catch (err) {
      if (!(err instanceof ApiException && err.code === 404)) throw err;
    }
    if (lease === undefined) {
      await api.createNamespacedLease({
        namespace,
        body: { metadata: { name, namespace }, spec: spec(0, now, now) },
      });
      lastRenewed = now;
      setLeading(true);
      return;
    }
    const holder = lease.spec?.holderIdentity ?? "";
    const renewTime = String(lease.spec?.renewTime ?? "");
    if (observed === undefined || observed.holder !== holder || observed.renewTime !== renewTime)
      observed = { holder, renewTime, at: now };
    const mine = holder === identity;
    const expired = holder === "" || now - observed.at > (lease.spec?.leaseDurationSeconds ?? 15) * 1000;
    if (!mine && !expired) {
      setLeading(false);
      return;
    }
    const transitions = (lease.spec?.leaseTransitions ?? 0) + (mine ? 0 : 1);
    const acquireTime =
      mine && lease.spec?.acquireTime ? new Date(String(lease.spec.acquireTime)).getTime() : now;
    await api.replaceNamespacedLease({
      name,
      namespace,
      body: { ...lease, spec: spec(transitions, acquireTime, now) },
    });
    lastRenewed = now;
    setLeading(true);
  }

  const loop = async () => {
    try {
      await attempt();
    } catch (err) {
      // A conflict means another candidate wrote first; anything else (apiserver unreachable) counts
      // against the renew deadline.
      if (!(err instanceof ApiException && err.code === 409))
        log("lease attempt failed", { err: err instanceof ApiException ? err.code : String(err) });
      if (leading && Date.now() - lastRenewed > renewDeadlineMs) setLeading(false);
      if (err instanceof ApiException && err.code === 409 && leading) setLeading(false);
    }
    if (!closed) timer = setTimeout(loop, retryPeriodMs);
  };
  timer = setTimeout(loop, 0);

  return {
    isLeader: () => leading,
    onChange(listener) {
      listeners.push(listener);
    },
    async close() {
      closed = true;
      clearTimeout(timer);
      if (!leading) return;
      setLeading(false);
      try {
        const lease = await api.readNamespacedLease({ name, namespace });
        if (lease.spec?.holderIdentity !== identity) return;
        await api.replaceNamespacedLease({
          name,
          namespace,
          body: { ...lease, spec: { ...lease.spec, holderIdentity: "", leaseDurationSeconds: 1 } },
        });
      } catch {
        // Unreachable or taken: it expires on its own.
      }
    },
  };
}
