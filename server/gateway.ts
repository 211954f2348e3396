/**
 * Assembles a gateway from its parts: config -> discovery + control state -> routing table -> scraper ->
 * router -> relay -> pipeline -> protocol adapters -> one listener. `startGateway` is what the kinfer-gateway
 * program and the integration tests call; `drain` is what SIGTERM does.
 *
 * Operational endpoints on the public port: GET /metrics (Prometheus), GET /healthz (liveness: the
 * process serves), GET /readyz (readiness: not draining), grpc.health.v1 and gRPC reflection.
 * Readiness does not depend on model replicas: with none, the gateway still answers (UNAVAILABLE, with
 * retry info) and counts those answers, which is what scale from zero (deploy/models/keda) triggers on;
 * a gateway taken out of its Service would turn those typed errors into refused connections.
 */

import { setMaxListeners } from "node:events";
import { hostname } from "node:os";
import type { DescFile } from "@bufbuild/protobuf";
import { Code, type ConnectRouter } from "@connectrpc/connect";
import { compressionGzip, connectNodeAdapter } from "@connectrpc/connect-node";
import { Agent } from "undici";
import { createHealthState, registerHealthService } from "../common/connect/health-service.js";
import { registerReflectionService } from "../common/connect/reflection-service.js";
import { type FileWatch, watchFile } from "../common/fs/watch-file.js";
import { type Listener, listen, type RequestHandler } from "../common/http/listener.js";
import { createOpsRoutes } from "../common/http/ops-routes.js";
import { createLogger, type Logger } from "../common/log/logger.js";
import { file_grpc_health_v1_health } from "../gen/es/grpc/health/v1/health_pb.js";
import { file_grpc_reflection_v1_reflection } from "../gen/es/grpc/reflection/v1/reflection_pb.js";
import { file_grpc_reflection_v1alpha_reflection } from "../gen/es/grpc/reflection/v1alpha/reflection_pb.js";
import { file_kinfer_admin_v1_admin } from "../gen/es/kinfer/admin/v1/admin_pb.js";
import {
  ErrorReason,
  file_kinfer_inference_v1_inference,
} from "../gen/es/kinfer/inference/v1/inference_pb.js";
import { adminAuthInterceptor, readAdminToken } from "./admin/admin-auth.js";
import { registerAdminService } from "./admin/admin-service.js";
import { planReload } from "./config/config-reload.js";
import { effectiveFlow, type FlowConfig, type GatewayConfig } from "./config/gateway-config.js";
import type { ControlStore } from "./control/control-state.js";
import { alwaysLeader, type LeaderElector } from "./control/lease.js";
import { createMemoryControlStore } from "./control/memory-control-store.js";
import type { EndpointSource } from "./discovery/endpoint-source.js";
import { createStaticSource } from "./discovery/static-source.js";
import { gatewayError } from "./errors/gateway-error.js";
import { createFlowController } from "./flow/flow-control.js";
import { createGatewayMetrics, type GatewayMetrics } from "./metrics/gateway-metrics.js";
import { createPipeline, type Pipeline } from "./pipeline/pipeline.js";
import { inferenceContextValues, registerInferenceService } from "./protocols/connect/inference-service.js";
import { createCorsHandler } from "./protocols/cors.js";
import { createOpenAiRoutes } from "./protocols/openai/openai-routes.js";
import { createRetryBudget } from "./relay/retry-budget.js";
import { createOutlierDetector } from "./replicas/outlier-detection.js";
import { isEligible } from "./replicas/replica.js";
import { type Scraper, startScraper } from "./replicas/scraper.js";
import { createRolloutController } from "./rollout/rollout.js";
import { createRouter } from "./routing/router.js";
import { createRoutingTable, type RoutingTable } from "./routing/routing-table.js";
import { createAdmitter } from "./tenants/admission.js";
import { type KeyStore, openKeyStore } from "./tenants/key-store.js";
import { createRequestTracer } from "./tracing/request-tracing.js";

export interface GatewayOptions {
  config: GatewayConfig;
  /** Where replicas come from. Default: the static replicas of the config. */
  endpoints?: EndpointSource;
  /** Where operators' changes live (server/control/). Default: this process's memory. */
  control?: ControlStore;
  /** Who runs the built-in rollouts among gateway replicas. Default: this one. */
  leader?: LeaderElector;
  /** Tenants' API keys. Default: from `tenants.keysFile`, if set (a Secret through the API is main.ts's). */
  keys?: KeyStore;
  /** Default: JSON logs on stdout at config.logLevel. */
  log?: Logger;
}

/** What the gateway holds for requests right now: all zero when it is idle. */
export interface GatewayActivity {
  /** Requests in the pipeline. */
  readonly inFlight: number;
  /** Requests accepted and ended since start (equal when idle: every request ended exactly once). */
  readonly accepted: number;
  readonly ended: number;
  /** Upstream requests open on replicas, summed over replicas. */
  readonly upstreamInFlight: number;
  /** Requests counted against the retry budget. */
  readonly retryBudgetInFlight: number;
  /** Tenants' open streams and reserved tokens (0 without API keys). */
  readonly tenantStreams: number;
  readonly reservedTokens: number;
}

export interface Gateway {
  /** e.g. http://127.0.0.1:8080 */
  readonly url: string;
  readonly port: number;
  readonly table: RoutingTable;
  /** The control state this gateway applies and the admin API writes. */
  readonly control: ControlStore;
  /** The config in force (after reloads; restart-only keys as started). */
  config(): GatewayConfig;
  readonly metrics: GatewayMetrics;
  readonly pipeline: Pipeline;
  /**
   * Applies a reloaded config: the keys that can change at run time take effect (config-reload.ts), the
   * others keep their running values and are named in a warning.
   */
  applyConfig(config: GatewayConfig): void;
  /** Scrapes every replica once now. */
  scrapeNow(): Promise<void>;
  /**
   * Graceful drain: health goes NOT_SERVING, then in-flight streams get up to `deadlineMs` (default
   * timeouts.drainMs) to finish before the remaining ones are cut and the gateway closes.
   */
  drain(deadlineMs?: number): Promise<void>;
  /** Closes at once. */
  close(): Promise<void>;
  /** The admin API's URL, when it is enabled. */
  readonly adminUrl: string | undefined;
  /** What is held for requests now (tests assert it returns to zero after hostile clients). */
  activity(): GatewayActivity;
  /** Connections open on the public port. */
  readonly connections: number;
}

const SERVICES = ["kinfer.inference.v1.InferenceService", "grpc.health.v1.Health"];
/** After a drain, how long the last responses (errors and trailers included) have to leave before close. */
const DRAIN_FLUSH_MS = 1000;
const REFLECTION = ["grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];
const ADMIN_SERVICES = ["kinfer.admin.v1.AdminService", ...REFLECTION];
const DESCRIPTORS: DescFile[] = [
  file_kinfer_inference_v1_inference,
  file_grpc_health_v1_health,
  file_grpc_reflection_v1_reflection,
  file_grpc_reflection_v1alpha_reflection,
];

export async function startGateway(options: GatewayOptions): Promise<Gateway> {
  let config = options.config;
  const log = options.log ?? createLogger(config.logLevel, "kinfer-gateway", config.logFormat);
  const now = () => performance.now();
  const staticSource = createStaticSource(config);
  const endpoints = options.endpoints ?? staticSource;

  const table = createRoutingTable();
  const rebuild = () => table.apply(config, endpoints.endpoints(), endpoints.name);
  rebuild();
  const unsubscribe = endpoints.onChange(rebuild);
  // Operators' changes, from this gateway or another: applied over the config as they arrive.
  const control = options.control ?? createMemoryControlStore();
  const leader = options.leader ?? alwaysLeader();
  const applyControl = () =>
    table.setControl(new Map([...control.snapshot()].map(([m, v]) => [m, v.control])));
  applyControl();
  const unsubscribeControl = control.onChange(applyControl);

  const metrics = createGatewayMetrics(() => table.replicas(), now);
  const dispatcher = new Agent({
    connect: { timeout: config.timeouts.connectMs },
    // Below vLLM's own 5 s (uvicorn's timeout_keep_alive, which sends no Keep-Alive hint): the gateway drops an
    // idle connection before the replica does, never sending a request on one the replica is closing.
    keepAliveTimeout: 4_000,
    // vLLM sends headers with the first token and may pause between tokens: the relay owns those timeouts.
    headersTimeout: 0,
    bodyTimeout: 0,
  });
  const router = createRouter({ now, prefixIndex: config.prefixIndex });
  const outliers = createOutlierDetector(config.ejection);
  const retryBudget = createRetryBudget(config.retry.budgetRatio, config.retry.minRetries);
  // API keys: opened once; the file itself is watched and reloaded by the store.
  const keysFile = config.tenants?.keysFile;
  const keys =
    options.keys ??
    (keysFile !== undefined
      ? openKeyStore({
          file: keysFile,
          onReloadError: (err) => {
            metrics.reloaded("keys", "rejected");
            log.error({ err: err.message }, "API keys reload failed; keeping the keys in force");
          },
        })
      : undefined);
  keys?.onChange(() => metrics.reloaded("keys", "applied"));
  const rollouts = createRolloutController({
    hasReadyReplica: (model, version) =>
      table
        .model(model)
        ?.versions.find((v) => v.name === version)
        ?.replicas.some((r) => isEligible(r, now())) ?? false,
    isLeader: () => leader.isLeader(),
    stored: (model) => control.snapshot().get(model)?.control.rollout,
    persist: async (model, state, weights) => {
      await control.update(model, (c) => ({ ...c, rollout: state, weights: Object.fromEntries(weights) }));
    },
    log: (message, fields) => log.info(fields, message),
    report: (model, phase, weight) => metrics.rollout(model, phase, weight),
  });
  const configureRollouts = (c: GatewayConfig) =>
    rollouts.configure(new Map(c.models.flatMap((m) => (m.rollout ? [[m.name, m.rollout] as const] : []))));
  configureRollouts(config);
  const admitter = keys !== undefined ? createAdmitter(keys, metrics.tenants, now) : undefined;
  // Flow control's limits per model, worked out once per config.
  let flowLimits = new Map<string, FlowConfig>();
  const limitsOf = (model: string) => {
    let l = flowLimits.get(model);
    if (l === undefined) {
      l = effectiveFlow(config, model);
      flowLimits.set(model, l);
    }
    return l;
  };
  const flow = createFlowController({
    now,
    setTimer(at, fn) {
      const t = setTimeout(fn, Math.max(0, at - now()));
      return () => clearTimeout(t);
    },
    model: (name) => table.model(name),
    limits: limitsOf,
    hooks: metrics.flow,
  });
  metrics.setQueueSource(() => flow.snapshot());
  // Slots free when the table changes (replicas appear, weights move) and when signals are scraped.
  const scraper: Scraper = startScraper(
    () => table.replicas(),
    config.scrape,
    now,
    (replica, healthy) => log.info({ replica: replica.id, healthy }, "replica health changed"),
    (replica) => flow.notify(replica.model),
    (replica) => table.model(replica.model)?.discoverAdapters === true,
  );
  // New replicas are scraped at once (the scraper otherwise finds them within its idle interval).
  table.onChange(() => {
    flow.notify();
    scraper.refresh();
  });
  // Spans per request, exported over OTLP when tracing.otlpEndpoint is set (restart-only).
  const tracer = createRequestTracer(config.tracing, hostname());
  const pipeline = createPipeline({
    config: () => config,
    tracer,
    onRequestEnd: rollouts.observe,
    admitter,
    flow,
    table,
    metrics,
    log,
    now,
    relay: {
      get config() {
        return config;
      },
      router,
      outliers,
      retryBudget,
      dispatcher,
      now,
      embeddingSizes: new Map(),
      onRouted: metrics.routed,
      onSend: (replica) => scraper.touch(replica),
      onSuspect: (replica) => scraper.suspect(replica),
      onRetry: metrics.retried,
      onEjected(replica) {
        metrics.ejected(replica);
        log.warn({ replica: replica.id, model: replica.model, version: replica.version }, "replica ejected");
      },
      onUpstreamFailure(replica, error, requestId) {
        log.warn(
          { requestId, replica: replica.id, failure: error.failure, detail: error.detail },
          "upstream failure",
        );
      },
    },
  });

  const health = createHealthState();
  const shutdown = new AbortController();
  // connect-node links every call's signal to this one while the call runs: one listener per call.
  setMaxListeners(0, shutdown.signal);
  const routes = (r: ConnectRouter) => {
    registerInferenceService(r, pipeline, table, () => config, now);
    registerHealthService(r, health, SERVICES);
    registerReflectionService(r, DESCRIPTORS, [...SERVICES, ...REFLECTION]);
  };
  const connect = connectNodeAdapter({
    // gzip only: gRPC registers no brotli, so a br request gets UNIMPLEMENTED and grpc-accept-encoding.
    acceptCompression: [compressionGzip],
    routes,
    contextValues: inferenceContextValues,
    readMaxBytes: config.limits.maxRequestBytes,
    writeMaxBytes: config.limits.maxResponseBytes,
    maxTimeoutMs: config.limits.maxTimeoutMs,
    shutdownSignal: shutdown.signal,
  });
  const openai = createOpenAiRoutes(pipeline, table, () => config);

  const ops = createOpsRoutes({ registry: metrics.registry, ready: () => health.serving });

  const corsOf = (c: GatewayConfig) =>
    createCorsHandler({
      allowedOrigins: c.cors.allowedOrigins,
      maxAgeSeconds: c.cors.maxAgeSeconds,
      extraHeaders: [c.sessionHeader, c.versionHeader],
    });
  let corsHandler = corsOf(config);
  const handler: RequestHandler = (req, res) => {
    if (corsHandler(req, res)) return;
    if (ops(req, res)) return;
    if (openai.handle(req, res)) return;
    connect(req as never, res as never);
  };

  const listener: Listener = await listen(
    {
      host: config.listen.host,
      port: config.listen.port,
      tls: config.listen.tls,
      maxConcurrentStreams: config.limits.maxConcurrentStreams,
      limits: config.connections,
    },
    handler,
  );
  log.info({ url: listener.url, models: table.models().map((m) => m.name) }, "gateway listening");

  // The admin API: its own listener (loopback by default), its own token.
  let admin: Listener | undefined;
  // The admin token: re-read when the config names another, or when its file changes (a rotated Secret).
  let adminToken = config.admin !== undefined ? readAdminToken(config.admin) : undefined;
  const reloadAdminToken = (why: string) => {
    if (config.admin === undefined) return;
    try {
      const next = readAdminToken(config.admin);
      if (next !== undefined && next !== adminToken) {
        adminToken = next;
        log.info({ why }, "admin token rotated");
      }
    } catch (err) {
      log.error({ err: (err as Error).message, why }, "admin token not rotated; keeping the one in force");
    }
  };
  let tokenWatch: FileWatch | undefined;
  const watchToken = () => {
    tokenWatch?.close();
    const file = config.admin?.tokenFile;
    tokenWatch =
      file === undefined ? undefined : watchFile(file, () => reloadAdminToken("token file changed"));
  };
  watchToken();
  if (config.admin !== undefined && adminToken !== undefined) {
    const adminHandler = connectNodeAdapter({
      // gzip only: gRPC registers no brotli, so a br request gets UNIMPLEMENTED and grpc-accept-encoding.
      acceptCompression: [compressionGzip],
      routes(r) {
        registerAdminService(r, { table, control, now, keys, queues: () => flow.snapshot() });
        registerReflectionService(r, [file_kinfer_admin_v1_admin, ...DESCRIPTORS.slice(2)], ADMIN_SERVICES);
      },
      interceptors: [adminAuthInterceptor(() => adminToken ?? "", log, keys)],
      readMaxBytes: 1024 * 1024,
      shutdownSignal: shutdown.signal,
    });
    admin = await listen(
      {
        host: config.admin.host,
        port: config.admin.port,
        tls: config.admin.tls,
        maxConcurrentStreams: 100,
        limits: config.connections,
      },
      (req, res) => adminHandler(req as never, res as never),
    );
    log.info({ url: admin.url }, "admin API listening");
  }

  // TLS certificates are served fresh when their files change (cert-manager rotating a mounted Secret),
  // and on every config reload (their paths are fixed at start: listen.tls and admin.tls are
  // restart-only). A pair read mid-rotation that does not match (a key already new, its certificate not
  // yet) is logged and the certificate in force kept: the rest of the rotation is a change too, and
  // reloads it. The files' events are gathered into one reload (a Secret's swap changes all of them).
  const reloadTls = (why: string) => {
    for (const [name, l] of [
      ["listener", config.listen.tls === undefined ? undefined : listener],
      ["admin", config.admin?.tls === undefined ? undefined : admin],
    ] as const) {
      if (l === undefined) continue;
      try {
        l.reloadTls();
        log.info({ why, listener: name }, "TLS certificate reloaded");
      } catch (err) {
        log.error(
          { err: (err as Error).message, why, listener: name },
          "TLS certificate not reloaded; keeping the one in force",
        );
      }
    }
  };
  let tlsChanged: NodeJS.Timeout | undefined;
  const onTlsFile = () => {
    clearTimeout(tlsChanged);
    tlsChanged = setTimeout(() => reloadTls("certificate file changed"), 100);
  };
  const tlsWatches: FileWatch[] = [];
  for (const file of new Set(
    [
      config.listen.tls?.certFile,
      config.listen.tls?.keyFile,
      config.admin?.tls?.certFile,
      config.admin?.tls?.keyFile,
      config.admin?.tls?.clientCaFile,
    ].filter((f) => f !== undefined),
  )) {
    // A file that cannot be watched (no inotify watch left, a directory that cannot be read) costs the
    // reload on change, not the gateway: its certificate still reloads with the config.
    const unwatched = (err: Error) =>
      log.warn(
        { file, err: err.message },
        "TLS file not watched; its certificate reloads with the config only",
      );
    try {
      tlsWatches.push(watchFile(file, onTlsFile, unwatched));
    } catch (err) {
      unwatched(err as Error);
    }
  }

  let closed = false;
  async function close(): Promise<void> {
    if (closed) return;
    closed = true;
    health.set(false);
    unsubscribe();
    unsubscribeControl();
    shutdown.abort();
    const stopped = [listener, ...(admin ? [admin] : [])].map((l) => {
      const done = l.stopAccepting().catch(() => {});
      l.closeAll();
      return done;
    });
    await Promise.all(stopped);
    await scraper.close();
    await dispatcher.close().catch(() => {});
    await endpoints.close();
    flow.close(
      gatewayError(Code.Unavailable, ErrorReason.SHUTTING_DOWN, "the gateway is shutting down; retry", 0),
    );
    keys?.close();
    tokenWatch?.close();
    for (const w of tlsWatches) w.close();
    clearTimeout(tlsChanged);
    rollouts.close();
    await leader.close(); // a leader hands the rollout Lease over now rather than when it expires
    await control.close();
    // The last spans, given at most 2 s (a collector that is down would hold the close for its timeout).
    await Promise.race([tracer.shutdown().catch(() => {}), new Promise((r) => setTimeout(r, 2000).unref())]);
  }

  return {
    url: listener.url,
    port: listener.port,
    adminUrl: admin?.url,
    table,
    control,
    metrics,
    pipeline,
    config: () => config,
    activity() {
      const tenants = admitter?.activity() ?? { streams: 0, reservedTokens: 0 };
      return {
        inFlight: pipeline.inFlight,
        accepted: pipeline.counts.accepted,
        ended: pipeline.counts.ended,
        upstreamInFlight: table.replicas().reduce((n, r) => n + r.inFlight, 0),
        retryBudgetInFlight: retryBudget.inFlight,
        tenantStreams: tenants.streams,
        reservedTokens: tenants.reservedTokens,
      };
    },
    get connections() {
      return listener.connections;
    },
    applyConfig(file) {
      metrics.reloaded("config", "applied");
      const plan = planReload(config, file);
      const tokenChanged =
        plan.config.admin?.token !== config.admin?.token ||
        plan.config.admin?.tokenFile !== config.admin?.tokenFile;
      config = plan.config;
      flowLimits = new Map();
      staticSource.update(config);
      configureRollouts(config);
      if (endpoints !== staticSource) rebuild();
      corsHandler = corsOf(config);
      log.level = config.logLevel;
      reloadTls("config changed");
      if (tokenChanged) {
        reloadAdminToken("config changed");
        watchToken();
      }
      flow.notify();
      log.info({ applied: plan.applied, models: config.models.map((m) => m.name) }, "config applied");
      if (plan.notApplied.length > 0)
        log.warn(
          { notApplied: plan.notApplied },
          "config keys not applied: they take effect at the next restart",
        );
    },
    scrapeNow: () => scraper.scrapeAll(),
    async drain(deadlineMs = config.timeouts.drainMs) {
      health.set(false);
      log.info({ inFlight: pipeline.inFlight, deadlineMs }, "draining");
      const until = now() + deadlineMs;
      while (pipeline.inFlight > 0 && now() < until) await new Promise((r) => setTimeout(r, 50));
      if (pipeline.inFlight > 0) {
        // Out of time: every stream still open ends with a typed, retryable error rather than a cut.
        log.warn({ inFlight: pipeline.inFlight }, "drain deadline reached; ending the remaining streams");
        pipeline.abortAll(
          gatewayError(Code.Unavailable, ErrorReason.SHUTTING_DOWN, "the gateway is shutting down; retry", 0),
        );
      }
      // The last streams' ends and trailers are on their way out: let connections finish (and watch
      // streams end) for a moment, then close.
      shutdown.abort();
      await listener.closeGracefully(DRAIN_FLUSH_MS);
      await close();
    },
    close,
  };
}
