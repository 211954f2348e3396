/**
 * The gateway's configuration: one schema for every timeout, limit and weight, each with its default.
 * The file is YAML (deploy/local/gateway.yaml for `npm start`, a ConfigMap in a cluster); it is validated
 * at start and on every reload, and an invalid file is reported with the path of the offending key
 * (unknown keys included) and changes nothing.
 */
import { readFile } from "node:fs/promises";
import { parse as parseYaml } from "yaml";
import { z } from "zod";
import { rolloutSchema } from "../rollout/rollout.js";

const ms = (max = 24 * 3600_000) => z.number().int().nonnegative().max(max);

/** Routing policy of a model (see proto kinfer.admin.v1.RoutingPolicy). */
export const routingPolicySchema = z
  .object({
    /** round-robin (the seed article's), least-outstanding, power-of-two-choices, resource-aware, prefix-aware. */
    algorithm: z
      .enum(["round-robin", "least-outstanding", "power-of-two-choices", "resource-aware", "prefix-aware"])
      .default("prefix-aware"),
    /** Scorer weights; llm-d's default recipe: queue 2, KV cache 2, prefix 3. */
    weights: z
      .object({
        queue: z.number().nonnegative().default(2),
        kvCache: z.number().nonnegative().default(2),
        prefix: z.number().nonnegative().default(3),
      })
      .strict()
      .default({ queue: 2, kvCache: 2, prefix: 3 }),
    /** Skip replicas with more waiting requests than this while others are below it. Default 5. */
    queueThreshold: z.number().int().nonnegative().default(5),
    /** Skip replicas with KV-cache usage above this while others are below it. Default 0.8. */
    kvCacheThreshold: z.number().min(0).max(1).default(0.8),
    /** Scraped signals older than this are stale and ignored. Default 200 ms. */
    signalMaxAgeMs: ms().default(200),
    /**
     * The bound of bounded-load affinity: a session's or a prefix's replica keeps it only while its load
     * (scraped running and waiting requests) is at most this many times the mean of the version's replicas
     * (plus one request); beyond, the request goes to the next replica in the key's order, so a popular
     * prefix never makes a hot spot. Default 2 (1.25 spilled so often that caches went cold: BENCHMARKS.md).
     */
    affinityLoadFactor: z.number().min(1).max(100).default(2),
    /** Whether an affinity key (RoutingHints.affinity_key or the session header) pins a session. Default true. */
    sessionAffinity: z.boolean().default(true),
  })
  .strict();

export type RoutingPolicyConfig = z.infer<typeof routingPolicySchema>;

const replicaUrl = z.url({ protocol: /^https?$/ }).transform((u) => u.replace(/\/+$/, ""));

const versionSchema = z
  .object({
    /** The version's name, unique within the model. */
    name: z.string().regex(/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/, "lowercase letters, digits, '-' and '.'"),
    /** Share of the model's traffic, relative to the other versions. Default 1. */
    weight: z.number().int().min(0).max(10_000).default(1),
    /** The model name the replicas serve (vLLM --served-model-name). Default: the model's name. */
    servedModelName: z.string().min(1).optional(),
    /** Replica base URLs (static discovery). */
    replicas: z.array(replicaUrl).default([]),
  })
  .strict();

/**
 * Flow control (server/flow/flow-control.ts): the per-model admission queue that holds requests while a
 * model's replicas are saturated. Gateway-wide defaults; a model may override any of them.
 */
export const flowSchema = z
  .object({
    /**
     * Requests this gateway lets through per routable, unsaturated replica before requests wait: the batch
     * size at which a replica reaches its throughput, at most vLLM's --max-num-seqs. Default 128: for the
     * simulator's 8B model on one H100, as much throughput as 256 with half the latency (BENCHMARKS.md).
     */
    maxInFlightPerReplica: z.number().int().positive().max(100_000).default(128),
    /**
     * Prompt tokens a replica may have pending prefill (this gateway's requests before their first token)
     * and still take non-critical requests: about one engine step's budget (vLLM's
     * --max-num-batched-tokens). Default 8192.
     */
    maxPrefillTokensPerReplica: z.number().int().positive().default(8192),
    /** The share of that bound kept for critical requests (others wait short of it). Default 0.1. */
    criticalReserve: z.number().min(0).max(0.9).default(0.1),
    /** Requests waiting per model; a full queue evicts lower classes first, else refuses (429). Default 1,000. */
    maxQueued: z.number().int().nonnegative().max(1_000_000).default(1000),
    /** Prompt bytes held by waiting requests per model. Default 32 MiB. */
    maxQueuedBytes: z
      .number()
      .int()
      .positive()
      .default(32 * 1024 * 1024),
    /** Longest wait for a slot; then RESOURCE_EXHAUSTED / 429 with retry-after. Default 30 s. */
    maxWaitMs: ms().default(30_000),
    /**
     * With no routable replica (a model scaled to zero), how long requests wait for one to become ready;
     * 0 answers UNAVAILABLE at once. Default 0; set it (minutes) for models that scale from zero.
     */
    activationTimeoutMs: ms().default(0),
  })
  .strict();

export type FlowConfig = z.infer<typeof flowSchema>;

const modelSchema = z
  .object({
    /** The name clients use. */
    name: z.string().min(1).max(256),
    /** Context length in tokens, reported by ListModels; 0 if unknown. */
    maxContextTokens: z.number().int().nonnegative().default(0),
    /** Routing policy; unset fields take the gateway-wide `routing` values. */
    routing: routingPolicySchema.partial().optional(),
    versions: z.array(versionSchema).min(1),
    /** The built-in progressive rollout of a canary version (server/rollout/rollout.ts); off when unset. */
    rollout: rolloutSchema.optional(),
    /** Flow control for this model; unset fields take the gateway-wide `flow` values. */
    flow: flowSchema.partial().optional(),
    /**
     * LoRA adapters of this model that every replica serves (vLLM's --lora-modules): requests naming one
     * as their model go to this model's replicas, preferring those where it is loaded.
     */
    adapters: z.array(z.string().min(1).max(256)).max(1000).default([]),
    /**
     * Learn the adapters each replica serves from its /v1/models (read with /health, every
     * scrape.healthIntervalMs), besides the declared ones and those loaded through the admin API.
     */
    discoverAdapters: z.boolean().default(false),
  })
  .strict()
  .superRefine((model, ctx) => {
    const names = new Set<string>();
    for (const [i, v] of model.versions.entries()) {
      if (names.has(v.name))
        ctx.addIssue({ code: "custom", path: ["versions", i, "name"], message: "duplicate version" });
      names.add(v.name);
    }
    if (model.rollout !== undefined) {
      for (const v of [model.rollout.canary, model.rollout.stable]) {
        if (!names.has(v))
          ctx.addIssue({ code: "custom", path: ["rollout"], message: `the model has no version "${v}"` });
      }
      if (model.rollout.canary === model.rollout.stable)
        ctx.addIssue({ code: "custom", path: ["rollout"], message: "canary and stable must differ" });
    }
  });

export const gatewayConfigSchema = z
  .object({
    listen: z
      .object({
        /** Default 127.0.0.1 (0.0.0.0 in a container). */
        host: z.string().default("127.0.0.1"),
        /** Default 8080. */
        port: z.number().int().min(0).max(65_535).default(8080),
        /** PEM files for TLS (ALPN h2 and http/1.1); unset serves cleartext (h2c and HTTP/1.1). */
        tls: z.object({ certFile: z.string(), keyFile: z.string() }).strict().optional(),
      })
      .strict()
      .default({ host: "127.0.0.1", port: 8080 }),
    limits: z
      .object({
        /** Largest request message or body, in bytes. Default 4 MiB (grpc-js's default receive limit). */
        maxRequestBytes: z
          .number()
          .int()
          .positive()
          .default(4 * 1024 * 1024),
        /** Largest response message, in bytes. Default 4 MiB. */
        maxResponseBytes: z
          .number()
          .int()
          .positive()
          .default(4 * 1024 * 1024),
        /**
         * Largest embeddings answer, as its vectors' float32 bytes (inputs x dimensions x 4): 2,048 inputs
         * of 4,096 dimensions are 32 MiB. A request whose answer would be larger is refused (400,
         * INVALID_ARGUMENT) before a replica works on it when its size is known ahead (dimensions given,
         * or the model's size learned from an earlier answer), else while the replica's answer arrives
         * (read only up to what such vectors take in base64; never counted against the replica). Default
         * 32 MiB. gRPC and Connect answers are bounded by maxResponseBytes too. The OpenAI surface writes
         * its answer one vector at a time, as the client reads it.
         */
        maxEmbeddingBytes: z
          .number()
          .int()
          .positive()
          .max(1024 * 1024 * 1024)
          .default(32 * 1024 * 1024),
        /** Longest deadline a client may set; longer ones are rejected. Default 10 minutes. */
        maxTimeoutMs: ms().default(600_000),
        /** HTTP/2 streams per connection. Default 1000. */
        maxConcurrentStreams: z.number().int().positive().max(100_000).default(1000),
        /** Highest max_tokens a request may ask for. Default 8192. */
        maxTokens: z.number().int().positive().default(8192),
        /** max_tokens used when a request sets none. Default 1024. */
        defaultMaxTokens: z.number().int().positive().default(1024),
        /** Most stop sequences per request. Default 16. */
        maxStopSequences: z.number().int().nonnegative().default(16),
        /** Requests in flight across the gateway; beyond it, RESOURCE_EXHAUSTED. Default 10,000. */
        maxInFlight: z.number().int().positive().default(10_000),
      })
      .strict()
      .prefault({}),
    /**
     * What one client connection may hold (common/http/listener.ts), on the public and admin ports: a
     * careless or hostile client (slowloris, idle sessions, huge metadata) is cut at these bounds.
     */
    connections: z
      .object({
        /** Time to send a request head (HTTP/1.1) or the HTTP/2 preface and a first stream. Default 10 s. */
        headersTimeoutMs: ms(3_600_000).min(100).default(10_000),
        /** Time a request has to send its whole body; then 408 (OpenAI) or the stream is reset. Default 30 s. */
        bodyTimeoutMs: ms(3_600_000).min(100).default(30_000),
        /** An HTTP/1.1 keep-alive connection or HTTP/2 session with no request open closes after this. Default 65 s. */
        idleTimeoutMs: ms(3_600_000).min(100).default(65_000),
        /** Connections open at once per port; more are refused. Default 10,000. */
        maxConnections: z.number().int().positive().max(1_000_000).default(10_000),
        /** Largest request head or HTTP/2 header list, in bytes. Default 32 KiB. */
        maxHeaderBytes: z
          .number()
          .int()
          .min(4096)
          .max(16 * 1024 * 1024)
          .default(32 * 1024),
      })
      .strict()
      .prefault({}),
    timeouts: z
      .object({
        /** Connecting to a replica. Default 2 s. */
        connectMs: ms().default(2000),
        /** From sending a request to its first token (per attempt). Default 60 s. */
        firstTokenMs: ms().default(60_000),
        /** Between two tokens, counted only while the gateway waits on the replica. Default 30 s. */
        interTokenMs: ms().default(30_000),
        /**
         * A client that reads nothing for this long while its stream has a token waiting is cancelled (a
         * slow reader holds a replica's sequence, but is never blamed on the replica). Default 60 s.
         */
        slowReaderMs: ms().min(100).default(60_000),
        /** On SIGTERM, how long in-flight streams may finish before they are cut. Default 30 s. */
        drainMs: ms().default(30_000),
      })
      .strict()
      .prefault({}),
    retry: z
      .object({
        /** Attempts per request, the first included (only before the first token). Default 3. */
        maxAttempts: z.number().int().min(1).max(10).default(3),
        /** Retries in progress may not exceed this share of requests in flight... Default 0.2. */
        budgetRatio: z.number().min(0).max(1).default(0.2),
        /** ...or this many, whichever is more. Default 3. */
        minRetries: z.number().int().nonnegative().default(3),
      })
      .strict()
      .prefault({}),
    ejection: z
      .object({
        /** Consecutive failures that eject a replica. Default 5. */
        consecutiveFailures: z.number().int().positive().default(5),
        /** First ejection; doubles on each further one. Default 5 s. */
        baseMs: ms().default(5000),
        /** Longest ejection. Default 60 s. */
        maxMs: ms().default(60_000),
      })
      .strict()
      .prefault({}),
    /**
     * Reading each replica's /metrics (server/replicas/scraper.ts): at `intervalMs` while it has traffic,
     * backing off to `idleIntervalMs` while nothing changes; health from the scrape, with /health read
     * every `healthIntervalMs`.
     */
    scrape: z
      .object({
        /** Scrape interval of a replica with traffic (ours, or moving gauges). Default 100 ms; 10 ms to 10 s. */
        intervalMs: z.number().int().min(10).max(10_000).default(100),
        /**
         * Longest interval, reached while a replica is idle and unchanged: how long another gateway's new
         * traffic there may go unseen. Default 2 s; 100 ms to 60 s.
         */
        idleIntervalMs: z.number().int().min(100).max(60_000).default(2000),
        /** How often /health is read (and at every scrape while it says 503). Default 5 s; 1 s to 10 min. */
        healthIntervalMs: z.number().int().min(1000).max(600_000).default(5000),
        /** Consecutive failed or timed-out scrapes that mark a replica unhealthy. Default 3; 1 to 10. */
        unhealthyAfter: z.number().int().min(1).max(10).default(3),
        /** Timeout of one scrape request. Default 1 s; at most 60 s. */
        timeoutMs: z.number().int().positive().max(60_000).default(1000),
        /** Scrapes in flight at once. Default 16; at most 1,000. */
        concurrency: z.number().int().positive().max(1000).default(16),
      })
      .strict()
      .refine((s) => s.idleIntervalMs >= s.intervalMs, {
        error: "idleIntervalMs must be at least intervalMs",
        path: ["idleIntervalMs"],
      })
      .prefault({}),
    /**
     * Where replicas come from: "static" (the replica URLs listed under each version) or "kubernetes"
     * (EndpointSlices labelled kinfer.io/model and kinfer.io/version, in the `namespaces` listed, which
     * the kubernetes source requires: the gateway needs a Role to read EndpointSlices in each, and never
     * looks anywhere else; credentials in-cluster or from `kubeconfig`). Models and versions are always
     * declared here.
     */
    discovery: z
      .object({
        source: z.enum(["static", "kubernetes"]).default("static"),
        namespaces: z
          .array(z.string().regex(/^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/, { error: "not a namespace name" }))
          .min(1)
          .optional(),
        kubeconfig: z.string().optional(),
      })
      .strict()
      .refine((d) => d.source !== "kubernetes" || d.namespaces !== undefined, {
        error: "the kubernetes source needs namespaces: the namespaces whose EndpointSlices name replicas",
        path: ["namespaces"],
      })
      .prefault({}),
    /**
     * The admin API (kinfer.admin.v1.AdminService) on its own listener, loopback by default. Callers send
     * `authorization: Bearer <token>`; the token comes from `tokenFile` (a mounted Secret) or, for local
     * use, `token`. Without either, the admin API is off.
     */
    admin: z
      .object({
        host: z.string().default("127.0.0.1"),
        port: z.number().int().min(0).max(65_535).default(8081),
        token: z.string().min(16, { error: "admin token: at least 16 characters" }).optional(),
        tokenFile: z.string().optional(),
        /**
         * TLS for the admin port; with `clientCaFile`, mutual TLS: callers also need a client certificate
         * signed by that CA (besides the token).
         */
        tls: z
          .object({ certFile: z.string(), keyFile: z.string(), clientCaFile: z.string().optional() })
          .strict()
          .optional(),
      })
      .strict()
      .optional(),
    /**
     * Tenants' API keys (server/tenants/key-store.ts). When set, every inference request must carry a
     * valid key (`authorization: Bearer <key>`), which decides the models it may use and its limits. The
     * file is YAML ({keys: [...]}), reloaded when it changes: a writable file (the admin API can then
     * create and revoke keys) or a mounted Secret (read-only).
     */
    /**
     * Tenants' API keys (server/tenants/): `keysFile`, a YAML file (writable locally, or a mounted Secret,
     * read-only), or `keysSecret`, a Secret read and written through the API, which every gateway replica
     * watches and the admin API's key calls write (a cluster with several gateways). One of the two.
     */
    tenants: z
      .object({
        keysFile: z.string().min(1).optional(),
        keysSecret: z
          .object({
            name: z.string().min(1).max(253),
            /** Default: the pod's own namespace. */
            namespace: z.string().min(1).max(63).optional(),
            /** The Secret's data key holding the YAML. Default keys.yaml. */
            key: z.string().min(1).max(253).default("keys.yaml"),
          })
          .strict()
          .optional(),
      })
      .strict()
      .refine((t) => (t.keysFile === undefined) !== (t.keysSecret === undefined), {
        error: "tenants: set keysFile or keysSecret (one of them)",
      })
      .optional(),
    /**
     * Where the control state lives (server/control/): what the admin API and the built-in rollout change
     * at run time (traffic splits, routing policies, drains, rollout progress). `memory`: this process
     * only, lost on restart (the default; one gateway). `file`: a local file, kept across restarts and
     * shared by gateways on one machine (`npm start`). `kubernetes`: KinferModel objects in `namespace`,
     * shared by every gateway replica, with the rollout run by the holder of the Lease `lease.name`.
     */
    control: z
      .object({
        store: z.enum(["memory", "file", "kubernetes"]).default("memory"),
        /** The state file (store: file), relative to the working directory. */
        file: z.string().min(1).optional(),
        /** The KinferModels' and the Lease's namespace (store: kubernetes). Default: the pod's own. */
        namespace: z.string().min(1).max(63).optional(),
        /** A kubeconfig file; default: in-cluster, else ~/.kube/config. */
        kubeconfig: z.string().optional(),
        lease: z
          .object({
            name: z.string().min(1).max(253).default("kinfer-gateway-rollout"),
            /** client-go's defaults: 15 s, 10 s, 2 s. */
            durationMs: ms().default(15_000),
            renewDeadlineMs: ms().default(10_000),
            retryPeriodMs: ms().default(2000),
          })
          .strict()
          .prefault({}),
      })
      .strict()
      .refine((c) => c.store !== "file" || c.file !== undefined, {
        error: "control.file is required with store: file",
        path: ["file"],
      })
      .prefault({}),
    /**
     * Browsers: origins allowed to call the public port (Connect and gRPC-Web over fetch), exact
     * ("https://app.example.com") or "*". Preflights are answered with connect-es's header lists.
     */
    cors: z
      .object({
        allowedOrigins: z.array(z.string().min(1)).default([]),
        /** How long browsers may cache a preflight. Default 2 h. */
        maxAgeSeconds: z.number().int().nonnegative().default(7200),
      })
      .strict()
      .prefault({}),
    /** Header that carries a session key for session affinity (besides RoutingHints.affinity_key). */
    sessionHeader: z.string().toLowerCase().default("x-session-id"),
    /** Header that pins a request to a model version (besides RoutingHints.version). */
    versionHeader: z.string().toLowerCase().default("x-kinfer-version"),
    /**
     * Header that sets a request's criticality for flow control (critical, standard, sheddable; besides
     * RoutingHints.priority). Unset: the API key's default, else standard.
     */
    priorityHeader: z.string().toLowerCase().default("x-kinfer-priority"),
    /** Flow control defaults (flowSchema). */
    flow: flowSchema.prefault({}),
    /** Gateway-wide routing defaults. */
    routing: routingPolicySchema.prefault({}),
    /** Prefix affinity index: characters per hashed block and blocks kept. */
    prefixIndex: z
      .object({
        blockChars: z.number().int().min(16).default(256),
        maxBlocksPerRequest: z.number().int().positive().default(128),
        maxEntries: z.number().int().positive().default(200_000),
      })
      .strict()
      .prefault({}),
    /**
     * OpenTelemetry traces (common/tracing/otlp-tracer.ts): a span per request and one per upstream
     * attempt, under the client's W3C trace context, exported over OTLP/HTTP to `otlpEndpoint` (the
     * collector's base URL, e.g. http://otel-collector.observability:4318). Off without an endpoint; the
     * client's traceparent is then passed to the replica as it came.
     */
    tracing: z
      .object({
        otlpEndpoint: z.url({ protocol: /^https?$/ }).optional(),
        serviceName: z.string().min(1).max(256).default("kinfer-gateway"),
        /** Share of new traces recorded (0 to 1); a client's sampled or not-sampled decision is kept. */
        sampleRatio: z.number().min(0).max(1).default(1),
        /** How long finished spans wait to be exported together. Default 1 s. */
        batchDelayMs: ms().min(10).default(1000),
        /** Finished spans waiting for export at most; more are dropped. Default 2048. */
        maxQueueSize: z.number().int().positive().max(1_000_000).default(2048),
      })
      .strict()
      .prefault({}),
    /** debug, info, warn, error or silent. Default info (a line per request). */
    logLevel: z.enum(["debug", "info", "warn", "error", "silent"]).default("info"),
    /** json (one object per line, for log collectors) or text (one readable line, for a terminal). Default json. */
    logFormat: z.enum(["json", "text"]).default("json"),
    models: z.array(modelSchema).default([]),
  })
  .strict()
  .superRefine((config, ctx) => {
    const names = new Set<string>();
    for (const [i, m] of config.models.entries()) {
      if (names.has(m.name))
        ctx.addIssue({ code: "custom", path: ["models", i, "name"], message: "duplicate model" });
      names.add(m.name);
    }
    // An adapter's name is a model name to clients: it must name one adapter of one model, and no model.
    const adapters = new Set<string>();
    for (const [i, m] of config.models.entries())
      for (const [j, a] of m.adapters.entries()) {
        if (names.has(a) || adapters.has(a))
          ctx.addIssue({
            code: "custom",
            path: ["models", i, "adapters", j],
            message: names.has(a) ? "an adapter named like a model" : "an adapter declared twice",
          });
        adapters.add(a);
      }
  });

export type GatewayConfig = z.infer<typeof gatewayConfigSchema>;
export type ModelConfig = GatewayConfig["models"][number];

/** An invalid configuration, with one line per problem naming the key. */
export class ConfigError extends Error {
  override readonly name = "ConfigError";
}

/** Validates a parsed config object; throws ConfigError naming every bad key. */
export function parseGatewayConfig(input: unknown, source = "config"): GatewayConfig {
  const result = gatewayConfigSchema.safeParse(input ?? {});
  if (result.success) return result.data;
  const lines = result.error.issues.map((issue) => {
    const path = issue.path.join(".");
    const keys =
      issue.code === "unrecognized_keys"
        ? ` (${issue.keys.map((k) => (path ? `${path}.${k}` : k)).join(", ")})`
        : "";
    return `${source}: ${path || "(root)"}: ${issue.message}${keys}`;
  });
  throw new ConfigError(lines.join("\n"));
}

/** Reads and validates a YAML config file. */
export async function loadGatewayConfig(file: string): Promise<GatewayConfig> {
  const text = await readFile(file, "utf8");
  let parsed: unknown;
  try {
    parsed = parseYaml(text, { maxAliasCount: 100 });
  } catch (err) {
    throw new ConfigError(`${file}: not valid YAML: ${(err as Error).message}`);
  }
  return parseGatewayConfig(parsed, file);
}

/** A model's effective flow limits: its overrides over the gateway's defaults. */
export function effectiveFlow(config: GatewayConfig, model: string): FlowConfig {
  const m = config.models.find((x) => x.name === model);
  const overrides = Object.fromEntries(Object.entries(m?.flow ?? {}).filter(([, v]) => v !== undefined));
  return { ...config.flow, ...overrides };
}

/** A model's effective routing policy: its overrides over the gateway's defaults. */
export function effectivePolicy(config: GatewayConfig, model: ModelConfig): RoutingPolicyConfig {
  return routingPolicySchema.parse({ ...config.routing, ...model.routing });
}
