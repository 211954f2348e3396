/**
 * kinfer-scheduler's server: the kube-scheduler extender (HTTP JSON under /scheduler), the same
 * operations as kinfer.scheduling.v1.SchedulingService over Connect/gRPC (with Explain, for `buf curl`),
 * gRPC reflection and health, /metrics and /healthz, on one port (common/http/listener.ts).
 *
 * Filter, prioritize and bind change what the scheduler holds, so that port belongs to kube-scheduler
 * alone: in a cluster it listens on loopback inside kube-scheduler's pod (deploy/base/scheduler). The
 * optional `ops` port serves what others may reach: /metrics, /healthz, health, reflection and the
 * read-only Explain (other RPCs there answer UNIMPLEMENTED).
 */
import type { ConnectRouter } from "@connectrpc/connect";
import { compressionGzip, connectNodeAdapter } from "@connectrpc/connect-node";
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";
import { createHealthState, registerHealthService } from "../common/connect/health-service.js";
import { registerReflectionService } from "../common/connect/reflection-service.js";
import { DEFAULT_CONNECTION_LIMITS, type Listener, listen } from "../common/http/listener.js";
import { createOpsRoutes } from "../common/http/ops-routes.js";
import { file_grpc_health_v1_health } from "../gen/es/grpc/health/v1/health_pb.js";
import { file_grpc_reflection_v1_reflection } from "../gen/es/grpc/reflection/v1/reflection_pb.js";
import { file_grpc_reflection_v1alpha_reflection } from "../gen/es/grpc/reflection/v1alpha/reflection_pb.js";
import {
  file_kinfer_scheduling_v1_scheduling,
  SchedulingService as SchedulingServiceDesc,
} from "../gen/es/kinfer/scheduling/v1/scheduling_pb.js";
import type { ClusterState } from "./cluster/cluster-state.js";
import { allocatedMilli } from "./cluster/gpu-node.js";
import { createHttpExtender } from "./extender/http-extender.js";
import {
  type Binder,
  createSchedulingService,
  type SchedulingService,
} from "./extender/scheduling-service.js";
import type { PolicyName } from "./policies/placement-policy.js";

export interface SchedulerServerOptions {
  /** The extender and the full SchedulingService: kube-scheduler's port. */
  host: string;
  port: number;
  /** A second, read-only port for Prometheus and operators: metrics, health, reflection, Explain. */
  ops?: { host: string; port: number } | undefined;
  state: ClusterState;
  defaultPolicy: PolicyName;
  binder?: Binder;
  /** Extender URL prefix. Default "/scheduler". */
  prefix?: string;
  /** Whether filter returns every node that fits or only the chosen one (see scheduling-service.ts). */
  filterReturns?: "all" | "best";
  /** Bound on holds and how long one lasts (scheduling-service.ts). Default 64 holds of 30 s. */
  holds?: { max: number; ttlMs: number };
}

export interface SchedulerServer {
  readonly url: string;
  readonly port: number;
  /** The read-only ops port's URL, when one was asked for. */
  readonly opsUrl: string | undefined;
  readonly service: SchedulingService;
  readonly registry: Registry;
  close(): Promise<void>;
}

const SERVICES = ["kinfer.scheduling.v1.SchedulingService", "grpc.health.v1.Health"];

/**
 * Largest extender request or message: kube-scheduler's ExtenderArgs with a Pod and the names of
 * thousands of nodes is a few hundred KB; a full-mode NodeList of 5,000 nodes a few MB.
 */
const MAX_REQUEST_BYTES = 16 * 1024 * 1024;

export async function startSchedulerServer(options: SchedulerServerOptions): Promise<SchedulerServer> {
  const { state } = options;
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  const decisions = new Counter({
    name: "kinfer_scheduler_decisions_total",
    help: "Extender decisions by verb and result.",
    labelNames: ["verb", "result"],
    registers: [registry],
  });
  const latency = new Histogram({
    name: "kinfer_scheduler_decision_duration_seconds",
    help: "Time to decide, by verb (HTTP parsing excluded).",
    labelNames: ["verb"],
    buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
    registers: [registry],
  });
  new Gauge({
    name: "kinfer_scheduler_cache_nodes",
    help: "Nodes in the scheduler's cache.",
    registers: [registry],
    collect() {
      this.set(state.nodes.size);
    },
  });
  new Gauge({
    name: "kinfer_scheduler_cache_pods",
    help: "Pods holding resources in the scheduler's cache (bound or assumed).",
    registers: [registry],
    collect() {
      this.set(state.podCount);
    },
  });
  new Gauge({
    name: "kinfer_scheduler_gpu_milli",
    help: "GPU thousandths in the cache, by kind: capacity or allocated.",
    labelNames: ["kind"],
    registers: [registry],
    collect() {
      let capacity = 0;
      let allocated = 0;
      for (const n of state.nodes.values()) {
        capacity += n.free.length * 1000;
        allocated += allocatedMilli(n);
      }
      this.set({ kind: "capacity" }, capacity);
      this.set({ kind: "allocated" }, allocated);
    },
  });

  const service = createSchedulingService({
    state,
    defaultPolicy: options.defaultPolicy,
    ...(options.binder !== undefined ? { binder: options.binder } : {}),
    ...(options.filterReturns !== undefined ? { filterReturns: options.filterReturns } : {}),
    ...(options.holds !== undefined
      ? { maxHolds: options.holds.max, reserveTtlMs: options.holds.ttlMs }
      : {}),
    onDecision(verb, result, seconds) {
      decisions.inc({ verb, result });
      latency.observe({ verb }, seconds);
    },
  });
  new Counter({
    name: "kinfer_scheduler_node_evaluations_total",
    help:
      "Nodes the filter evaluated, by source: scored (fit and score worked out) or cached (unchanged " +
      "since a pod of the same shape was scored).",
    labelNames: ["source"],
    registers: [registry],
    collect() {
      this.reset();
      this.inc({ source: "scored" }, service.evaluations.scored);
      this.inc({ source: "cached" }, service.evaluations.cached);
    },
  });
  const holdsRefused = new Counter({
    name: "kinfer_scheduler_holds_refused_total",
    help: "Picks the filter or prioritize could not hold because maxHolds pods were held already.",
    registers: [registry],
  });
  const health = createHealthState();
  const reflection = (router: ConnectRouter) =>
    registerReflectionService(
      router,
      [
        file_kinfer_scheduling_v1_scheduling,
        file_grpc_health_v1_health,
        file_grpc_reflection_v1_reflection,
        file_grpc_reflection_v1alpha_reflection,
      ],
      [...SERVICES, "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"],
    );
  const adapter = (routes: (router: ConnectRouter) => void) =>
    // gzip only: gRPC registers no brotli, so a br request gets UNIMPLEMENTED and grpc-accept-encoding.
    connectNodeAdapter({ routes, readMaxBytes: MAX_REQUEST_BYTES, acceptCompression: [compressionGzip] });
  const connect = adapter((router) => {
    router.service(SchedulingServiceDesc, {
      filter: (req) => service.filter(req),
      prioritize: (req) => service.prioritize(req),
      bind: (req) => service.bind(req),
      preempt: (req) => service.preempt(req),
      explain: (req) => service.explain(req),
    });
    registerHealthService(router, health, SERVICES);
    reflection(router);
  });
  const readOnly = adapter((router) => {
    router.service(SchedulingServiceDesc, { explain: (req) => service.explain(req) });
    registerHealthService(router, health, SERVICES);
    reflection(router);
  });
  const extender = createHttpExtender(service, {
    prefix: options.prefix ?? "/scheduler",
    maxBodyBytes: MAX_REQUEST_BYTES,
    bodyTimeoutMs: DEFAULT_CONNECTION_LIMITS.bodyTimeoutMs,
  });
  const ops = createOpsRoutes({ registry });
  const expire = setInterval(() => state.expireAssumed(), 1000);
  expire.unref();
  service.onHoldRefused = () => holdsRefused.inc();

  const listener: Listener = await listen(
    { host: options.host, port: options.port, maxConcurrentStreams: 1000, limits: DEFAULT_CONNECTION_LIMITS },
    (req, res) => {
      if (ops(req, res)) return;
      if (extender(req, res)) return;
      connect(req as never, res as never);
    },
  );
  const opsListener =
    options.ops === undefined
      ? undefined
      : await listen(
          {
            host: options.ops.host,
            port: options.ops.port,
            maxConcurrentStreams: 100,
            limits: DEFAULT_CONNECTION_LIMITS,
          },
          (req, res) => {
            if (ops(req, res)) return;
            readOnly(req as never, res as never);
          },
        );

  return {
    url: listener.url,
    port: listener.port,
    opsUrl: opsListener?.url,
    service,
    registry,
    async close() {
      clearInterval(expire);
      health.set(false);
      const listeners = [listener, ...(opsListener !== undefined ? [opsListener] : [])];
      const stopped = listeners.map((l) => l.stopAccepting());
      for (const l of listeners) l.closeAll();
      await Promise.all(stopped);
    },
  };
}
