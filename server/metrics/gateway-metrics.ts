/**
 * The gateway's /metrics: one prom-client Registry per gateway instance. Request outcomes by model,
 * version, protocol and code; time to first token and inter-token latency per model version (vLLM's
 * buckets, so canary judgements compare like with like); tokens; in-flight requests; retries, ejections
 * and routing decisions; and per-replica state and signals, read from the routing table when scraped.
 */
import type { Code } from "@connectrpc/connect";
import { Code as Codes } from "@connectrpc/connect";
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";
import { ITL_BUCKETS, REQUEST_LATENCY_BUCKETS, TTFT_BUCKETS } from "../../common/metrics/vllm-buckets.js";
import type { UpstreamFailure } from "../errors/gateway-error.js";
import type { FlowHooks, QueueState } from "../flow/flow-control.js";
import { type Replica, replicaStatus } from "../replicas/replica.js";
import type { Protocol } from "../request/inference-request.js";
import type { PickReason } from "../routing/pick-replica.js";
import type { TenantUsage } from "../tenants/admission.js";

/** snake_case name of a Connect code ("ok" for success), as gRPC tooling spells them. */
export function codeName(code: Code | undefined): string {
  if (code === undefined) return "ok";
  return Codes[code].replace(/([a-z])([A-Z])/g, "$1_$2").toLowerCase();
}

export interface GatewayMetrics {
  readonly registry: Registry;
  /** A request for a configured model began (after validation). */
  requestStarted(model: string): void;
  /** A request ended; `started` says whether requestStarted was called for it. */
  requestEnded(
    model: string,
    version: string,
    protocol: Protocol,
    code: Code | undefined,
    seconds: number,
    started: boolean,
  ): void;
  firstToken(model: string, version: string, seconds: number): void;
  /** An observer of one stream's inter-token gaps, its labels resolved once (it runs for every token). */
  interTokenObserver(model: string, version: string): (seconds: number) => void;
  tokens(model: string, version: string, prompt: number, completion: number, cached: number): void;
  routed(model: string, version: string, reason: PickReason): void;
  retried(model: string, failure: UpstreamFailure): void;
  ejected(replica: Replica): void;
  /** Per-tenant usage, when API keys are configured. */
  readonly tenants: TenantUsage;
  /** The built-in rollout's state of a model. */
  rollout(model: string, phase: string, canaryWeight: number): void;
  /** A reload of the config file or the keys: applied, or rejected (the one in force kept). */
  reloaded(source: "config" | "keys", result: "applied" | "rejected"): void;
  /** Flow control's events (queue waits, dispatches, sheds). */
  readonly flow: FlowHooks;
  /** Where the queue gauges read from (set once flow control exists). */
  setQueueSource(snapshot: () => readonly QueueState[]): void;
}

export function createGatewayMetrics(replicas: () => readonly Replica[], now: () => number): GatewayMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  const registers = [registry];

  const reloads = new Counter({
    name: "kinfer_gateway_reloads_total",
    help: "Reloads of the config file and the API keys, applied or rejected (a rejected one keeps what is in force: alert on it).",
    labelNames: ["source", "result"],
    registers,
  });
  for (const source of ["config", "keys"])
    for (const result of ["applied", "rejected"]) reloads.inc({ source, result }, 0);
  const requests = new Counter({
    name: "kinfer_gateway_requests_total",
    help: "Inference requests by model, version, protocol and result code.",
    labelNames: ["model", "version", "protocol", "code"],
    registers,
  });
  const inFlight = new Gauge({
    name: "kinfer_gateway_requests_in_flight",
    help: "Inference requests being served.",
    labelNames: ["model"],
    registers,
  });
  const duration = new Histogram({
    name: "kinfer_gateway_request_duration_seconds",
    help: "Time from accepting a request to its end.",
    labelNames: ["model", "version", "protocol"],
    buckets: [...REQUEST_LATENCY_BUCKETS],
    registers,
  });
  const ttft = new Histogram({
    name: "kinfer_gateway_time_to_first_token_seconds",
    help: "Time from accepting a request to relaying its first token.",
    labelNames: ["model", "version"],
    buckets: [...TTFT_BUCKETS],
    registers,
  });
  const itl = new Histogram({
    name: "kinfer_gateway_inter_token_latency_seconds",
    help: "Time between two relayed tokens.",
    labelNames: ["model", "version"],
    buckets: [...ITL_BUCKETS],
    registers,
  });
  const tokens = new Counter({
    name: "kinfer_gateway_tokens_total",
    help: "Tokens by kind: prompt, completion, cached (prompt tokens served from a replica's prefix cache).",
    labelNames: ["model", "version", "kind"],
    registers,
  });
  const routing = new Counter({
    name: "kinfer_gateway_routing_decisions_total",
    help: "Replica choices by reason (round-robin, least-outstanding, power-of-two-choices, score, prefix, session, stale-signals).",
    labelNames: ["model", "version", "reason"],
    registers,
  });
  const retries = new Counter({
    name: "kinfer_gateway_retries_total",
    help: "Requests retried on another replica before their first token, by the failure that caused it.",
    labelNames: ["model", "failure"],
    registers,
  });
  const ejections = new Counter({
    name: "kinfer_gateway_ejections_total",
    help: "Replicas ejected by outlier detection.",
    labelNames: ["model", "version", "replica"],
    registers,
  });

  const replicaGauge = (name: string, help: string, read: (r: Replica) => number | undefined) =>
    new Gauge({
      name,
      help,
      labelNames: ["model", "version", "replica"],
      registers,
      collect() {
        this.reset();
        for (const r of replicas()) {
          const v = read(r);
          if (v !== undefined) this.set({ model: r.model, version: r.version, replica: r.id }, v);
        }
      },
    });
  replicaGauge(
    "kinfer_gateway_replica_in_flight",
    "Requests in flight on a replica from this gateway.",
    (r) => r.inFlight,
  );
  replicaGauge(
    "kinfer_gateway_replica_waiting",
    "vllm:num_requests_waiting as last scraped.",
    (r) => r.signals?.waiting,
  );
  replicaGauge(
    "kinfer_gateway_replica_running",
    "vllm:num_requests_running as last scraped.",
    (r) => r.signals?.running,
  );
  replicaGauge(
    "kinfer_gateway_replica_kv_cache_usage",
    "vllm:kv_cache_usage_perc as last scraped.",
    (r) => r.signals?.kvCacheUsage,
  );
  new Gauge({
    name: "kinfer_gateway_replica_state",
    help: "1 for the replica's current routing state (ready, draining, unhealthy, ejected).",
    labelNames: ["model", "version", "replica", "state"],
    registers,
    collect() {
      this.reset();
      const t = now();
      for (const r of replicas()) {
        this.set({ model: r.model, version: r.version, replica: r.id, state: replicaStatus(r, t) }, 1);
      }
    },
  });

  const tenantRequests = new Counter({
    name: "kinfer_gateway_tenant_requests_total",
    help: "Requests by tenant and admission result (admitted, rate_limited, token_budget, too_many_streams, model_not_allowed).",
    labelNames: ["tenant", "result"],
    registers,
  });
  const tenantTokens = new Counter({
    name: "kinfer_gateway_tenant_tokens_total",
    help: "Tokens (prompt plus generated) used by a tenant's requests, as charged to its token budget.",
    labelNames: ["tenant"],
    registers,
  });
  const tenantStreams = new Gauge({
    name: "kinfer_gateway_tenant_streams",
    help: "Streams a tenant has open.",
    labelNames: ["tenant"],
    registers,
  });

  const rolloutPhase = new Gauge({
    name: "kinfer_gateway_rollout_phase",
    help: "1 for the built-in rollout's current phase of a model (idle, progressing, promoted, rolled-back).",
    labelNames: ["model", "phase"],
    registers,
  });
  const rolloutWeight = new Gauge({
    name: "kinfer_gateway_rollout_canary_weight",
    help: "The canary's traffic weight (out of 100) set by the built-in rollout.",
    labelNames: ["model"],
    registers,
  });

  let queues: () => readonly QueueState[] = () => [];
  new Gauge({
    name: "kinfer_gateway_queue_length",
    help: "Requests waiting in a model's flow-control queue, by criticality (what KEDA or an HPA can scale a model on).",
    labelNames: ["model", "priority"],
    registers,
    collect() {
      this.reset();
      for (const q of queues())
        for (const [priority, n] of Object.entries(q.queued)) this.set({ model: q.model, priority }, n);
    },
  });
  new Gauge({
    name: "kinfer_gateway_queue_oldest_wait_seconds",
    help: "How long the oldest request in a model's queue has waited.",
    labelNames: ["model"],
    registers,
    collect() {
      this.reset();
      for (const q of queues()) this.set({ model: q.model }, q.oldestWaitMs / 1000);
    },
  });
  new Gauge({
    name: "kinfer_gateway_model_slots",
    help: "Requests a model can take now without waiting (0: saturated, requests queue).",
    labelNames: ["model"],
    registers,
    collect() {
      this.reset();
      for (const q of queues()) this.set({ model: q.model }, q.slots);
    },
  });
  const queueWait = new Histogram({
    name: "kinfer_gateway_queue_wait_seconds",
    help: "Time requests waited for a slot in flow control (0 when they did not wait).",
    labelNames: ["model", "priority"],
    buckets: [0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
    registers,
  });
  const shed = new Counter({
    name: "kinfer_gateway_shed_total",
    help: "Requests flow control refused or sent away, by criticality and reason (queue-full, evicted, wait-timeout, wait-too-long, no-replica).",
    labelNames: ["model", "priority", "reason"],
    registers,
  });
  const dispatchedTokens = new Counter({
    name: "kinfer_gateway_flow_dispatched_tokens_total",
    help: "Tokens (prompt estimate plus max_tokens) let through by flow control, per tenant: each tenant's share of a model.",
    labelNames: ["model", "tenant"],
    registers,
  });

  return {
    registry,
    flow: {
      dispatched(model, priority, tenant, waitMs, cost) {
        queueWait.observe({ model, priority }, waitMs / 1000);
        dispatchedTokens.inc({ model, tenant }, cost);
      },
      shed: (model, priority, reason) => shed.inc({ model, priority, reason }),
    },
    setQueueSource(snapshot) {
      queues = snapshot;
    },
    reloaded(source, result) {
      reloads.inc({ source, result });
    },
    rollout(model, phase, canaryWeight) {
      for (const p of ["idle", "progressing", "promoted", "rolled-back"])
        rolloutPhase.set({ model, phase: p }, p === phase ? 1 : 0);
      rolloutWeight.set({ model }, canaryWeight);
    },
    tenants: {
      admitted: (tenant) => tenantRequests.inc({ tenant, result: "admitted" }),
      refused: (tenant, result) => tenantRequests.inc({ tenant, result }),
      streams: (tenant, delta) => tenantStreams.inc({ tenant }, delta),
      tokens: (tenant, n) => tenantTokens.inc({ tenant }, n),
    },
    requestStarted: (model) => inFlight.inc({ model }),
    requestEnded(model, version, protocol, code, seconds, started) {
      if (started) inFlight.dec({ model });
      requests.inc({ model, version, protocol, code: codeName(code) });
      duration.observe({ model, version, protocol }, seconds);
    },
    firstToken: (model, version, seconds) => ttft.observe({ model, version }, seconds),
    interTokenObserver(model, version) {
      const child = itl.labels({ model, version });
      return (seconds) => child.observe(seconds);
    },
    tokens(model, version, prompt, completion, cached) {
      tokens.inc({ model, version, kind: "prompt" }, prompt);
      tokens.inc({ model, version, kind: "completion" }, completion);
      tokens.inc({ model, version, kind: "cached" }, cached);
    },
    routed: (model, version, reason) => routing.inc({ model, version, reason }),
    retried: (model, failure) => retries.inc({ model, failure }),
    ejected: (r) => ejections.inc({ model: r.model, version: r.version, replica: r.id }),
  };
}
