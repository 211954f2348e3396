/**
 * A simulated vLLM server: the HTTP surface (routes, controls, health, metrics) in front of one engine
 * (sim/engine). Serving a completion itself is sim/completion's work: prepare-completion.ts turns the body
 * into a sequence, run-completion.ts runs it and writes the answer.
 *
 * Endpoints, as vLLM serves them: POST /v1/completions and /v1/chat/completions (JSON, or SSE with
 * `stream: true`), POST /v1/responses (run as a chat, answered in the Responses API's shapes),
 * POST /v1/embeddings (sim/embedding), GET /v1/models, GET /health, GET /metrics,
 * GET /version. And the simulator's own
 * controls under /sim/: GET|POST /sim/faults (fault rates), POST /sim/health {"healthy"}, POST /sim/drain
 * {"draining"}, POST /sim/slowdown {"factor"}, GET /sim/stats (the engine's state and
 * the requests served on the gateway's routes, as JSON), GET /sim/traces
 * (per request id, wall-clock ms when the request arrived and when its first token was written, for the
 * last 50,000 requests: benchmarks use it to separate the network and the gateway from the engine).
 *
 * Like vLLM, a streaming response sends its headers and role chunk only with the first token, and an error
 * before that is an ordinary HTTP error; after it, errors arrive in-band. A client that disconnects aborts
 * its sequence at once, freeing its KV blocks (visible as finished_reason="abort" in /metrics). Bad input
 * gets vLLM's JSON error and never affects other requests.
 */
import { randomBytes } from "node:crypto";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { SpanKind } from "@opentelemetry/api";
import { LRUCache } from "lru-cache";
import { z } from "zod";
import { BodyTooLarge, readBody } from "../../common/http/read-body.js";
import { type ResponsesRenderer, responsesRenderer } from "../../common/openai/responses-events.js";
import { extractContext, startOtlpTracer } from "../../common/tracing/otlp-tracer.js";
import { describeZodError } from "../completion/openai-request.js";
import { type PreparedCompletion, prepareCompletion } from "../completion/prepare-completion.js";
import { prepareResponses } from "../completion/prepare-responses.js";
import { runCompletion, wallClock } from "../completion/run-completion.js";
import { sendError, sendJson } from "../completion/send-json.js";
import { VllmError } from "../completion/vllm-error.js";
import { prepareEmbeddings, runEmbeddings } from "../embedding/embeddings.js";
import { type Clock, createRealClock } from "../engine/clock.js";
import { createEngine, type Engine } from "../engine/engine.js";
import { type EngineOptions, resolveEngineOptions } from "../engine/engine-options.js";
import { createFaultDice, type FaultRates, parseFaultHeader, type RequestFault } from "../faults/faults.js";
import { createReplicaMetrics } from "../metrics/vllm-metrics.js";

/** How to start a simulated server. */
export interface SimServerOptions {
  /** The served model name. Required. */
  model: string;
  /** Listen address. Default "127.0.0.1". */
  host?: string;
  /** Listen port; 0 picks a free one. Default 0. */
  port?: number;
  /** Engine model parameters (see EngineOptions for the defaults and their sources). */
  engine?: Partial<EngineOptions>;
  /** /health answers 503 (and requests are refused) for this long after start, like a loading model. Default 0. */
  startupDelayMs?: number;
  /** Random fault rates. Default none. */
  faults?: Partial<FaultRates>;
  /** Seed of the fault dice. Default 1. */
  seed?: number;
  /** Largest request body accepted, in bytes; larger ones get 413. Default 32 MiB. */
  maxBodyBytes?: number;
  /** The clock; real time unless a test injects one. */
  clock?: Clock;
  /**
   * As vLLM's --otlp-traces-endpoint: a span ("llm_request") per request, a child of the request's W3C
   * traceparent, exported over OTLP/HTTP to this base URL. Default none.
   */
  otlpTracesEndpoint?: string;
  /**
   * As vLLM's --enable-lora: requests may name a LoRA adapter as their model; /v1/load_lora_adapter and
   * /v1/unload_lora_adapter manage them at run time (vLLM also needs VLLM_ALLOW_RUNTIME_LORA_UPDATING=True);
   * vllm:lora_requests_info is reported. Default off.
   */
  enableLora?: boolean;
  /** Adapters loaded at start, name -> path (vLLM's --lora-modules name=path). */
  loraModules?: Readonly<Record<string, string>>;
}

/** A running simulated server. */
export interface SimServer {
  readonly model: string;
  /** Base URL, e.g. http://127.0.0.1:8001 */
  readonly url: string;
  readonly port: number;
  readonly engine: Engine;
  /** The Prometheus text of /metrics. */
  metricsText(): Promise<string>;
  /**
   * Bytes of open responses written but not yet taken by the network: what a slow reader (the gateway
   * when its client stops reading) leaves queued at the replica, i.e. backpressure reaching it.
   */
  backlogBytes(): number;
  /**
   * Bytes the sockets of open completions have been handed so far, sent or still queued: what the replica
   * produced (compare with backlogBytes to see how much of it a reader took).
   */
  writtenBytes(): number;
  /** Stops listening, ends open connections (aborting their sequences) and resolves when closed. */
  close(): Promise<void>;
}

const DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024;
/** Most LoRA adapters registered at once (vLLM has no such bound; a simulator open to any client needs one). */
const MAX_ADAPTERS = 1000;
const adapterRequest = z.object({
  lora_name: z.string().min(1).max(256),
  lora_path: z.string().min(1).max(4096).optional(),
});
const VERSION = "0.12.0+kinfer-sim";

/** Starts a simulated server and resolves once it listens. Throws if an option is invalid. */
export async function startSimServer(options: SimServerOptions): Promise<SimServer> {
  const model = z.string().min(1).parse(options.model);
  const clock = options.clock ?? createRealClock();
  const metrics = createReplicaMetrics(model, { lora: options.enableLora === true });
  /** Loaded LoRA adapters, name -> path (at most MAX_ADAPTERS). */
  const adapters = new Map<string, string>(Object.entries(options.loraModules ?? {}));
  const engine = createEngine(resolveEngineOptions(options.engine), clock, metrics.observer);
  metrics.bind(engine);
  const dice = createFaultDice(options.faults ?? {}, options.seed ?? 1);
  const maxBodyBytes = options.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
  const readyAt = Date.now() + (options.startupDelayMs ?? 0);
  const control = { healthy: true, draining: false };
  const created = Math.floor(Date.now() / 1000);
  /** Responses of completions still open (for backlogBytes). */
  const open = new Set<http.ServerResponse>();
  const backlogBytes = () => {
    let n = 0;
    for (const res of open) n += res.writableLength + (res.socket?.writableLength ?? 0);
    return n;
  };
  const writtenBytes = () => {
    let n = 0;
    for (const res of open) n += res.socket?.bytesWritten ?? 0;
    return n;
  };
  const tracer =
    options.otlpTracesEndpoint === undefined
      ? undefined
      : startOtlpTracer({
          endpoint: z.url({ protocol: /^https?$/ }).parse(options.otlpTracesEndpoint),
          serviceName: "vllm",
          sampleRatio: 1,
          batchDelayMs: 200,
        });
  /**
   * vLLM's request span, ended now: started when the request arrived, under its traceparent, with the
   * attributes vLLM sets (gen_ai.*).
   */
  const recordSpan = (
    req: http.IncomingMessage,
    requestId: string,
    arrivedAt: number,
    result: { promptTokens: number; completionTokens: number },
  ) => {
    if (tracer === undefined) return;
    const span = tracer.startSpan(
      "llm_request",
      {
        kind: SpanKind.SERVER,
        startTime: arrivedAt,
        attributes: {
          "gen_ai.response.model": model,
          "gen_ai.request.id": requestId,
          "gen_ai.usage.prompt_tokens": result.promptTokens,
          "gen_ai.usage.completion_tokens": result.completionTokens,
        },
      },
      extractContext(req.headers),
    );
    const firstToken = traces.get(requestId.slice(0, 128))?.[1];
    if (firstToken !== undefined)
      span.setAttribute("gen_ai.latency.time_to_first_token", (firstToken - arrivedAt) / 1000);
    span.setAttribute("gen_ai.latency.e2e", (wallClock() - arrivedAt) / 1000);
    span.end();
  };
  /** Request id -> [arrived, first token written], wall-clock ms with sub-ms precision. */
  const traces = new LRUCache<string, [number, number]>({ max: 50_000 });
  /**
   * Requests served since start on the routes a gateway calls (benchmarks count what its scraping costs a
   * replica); only these keys, so a client cannot grow the map.
   */
  const served: Record<string, number> = {
    "GET /health": 0,
    "GET /metrics": 0,
    "POST /v1/completions": 0,
    "POST /v1/chat/completions": 0,
  };

  const server = http.createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      // Only a bug reaches here; answer 500 without details and keep serving.
      console.error("kinfer-sim: unexpected error", err);
      if (!res.headersSent) sendJson(res, 500, new VllmError(500, "Internal server error").toJson());
      else res.destroy();
    });
  });
  // vLLM's server (uvicorn) closes a connection idle for 5 s (VLLM_HTTP_TIMEOUT_KEEP_ALIVE): so does this one,
  // so that a client keeping connections longer than vLLM does is caught here, not in production.
  server.keepAliveTimeout = 5_000;

  function ready(): boolean {
    return Date.now() >= readyAt && control.healthy && !control.draining;
  }

  async function handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", "http://sim");
    const route = `${req.method} ${url.pathname}`;
    if (route in served) (served[route] as number)++;
    switch (route) {
      case "GET /health":
        res.writeHead(ready() ? 200 : 503).end();
        return;
      case "GET /version":
        return sendJson(res, 200, { version: VERSION });
      case "GET /metrics":
        res.writeHead(200, { "content-type": metrics.registry.contentType });
        res.end(await metrics.registry.metrics());
        return;
      case "GET /v1/models":
        return sendJson(res, 200, {
          object: "list",
          data: [
            {
              id: model,
              object: "model",
              created,
              owned_by: "vllm",
              root: model,
              parent: null,
              max_model_len: engine.options.maxModelLen,
            },
            // vLLM lists each loaded adapter under its base model.
            ...[...adapters].map(([name, path]) => ({
              id: name,
              object: "model",
              created,
              owned_by: "vllm",
              root: path,
              parent: model,
              max_model_len: engine.options.maxModelLen,
            })),
          ],
        });
      case "POST /v1/load_lora_adapter":
      case "POST /v1/unload_lora_adapter":
        if (options.enableLora !== true) return sendJson(res, 404, { detail: "Not Found" });
        return loraAdapter(req, res, url.pathname === "/v1/load_lora_adapter");
      case "GET /sim/stats":
        return sendJson(res, 200, {
          ...engine.stats(),
          backlogBytes: backlogBytes(),
          served,
          healthy: control.healthy,
          draining: control.draining,
        });
      case "GET /sim/traces":
        return sendJson(res, 200, Object.fromEntries(traces.entries()));
      case "GET /sim/faults":
        return sendJson(res, 200, dice.rates());
      case "POST /sim/faults":
        return runControl(req, res, (body) => dice.setRates(body));
      case "POST /sim/health":
        return runControl(req, res, (body) => {
          control.healthy = z.object({ healthy: z.boolean() }).strict().parse(body).healthy;
          return control;
        });
      case "POST /sim/drain":
        return runControl(req, res, (body) => {
          control.draining = z.object({ draining: z.boolean() }).strict().parse(body).draining;
          return control;
        });
      case "POST /sim/slowdown":
        return runControl(req, res, (body) => {
          const { factor } = z
            .object({ factor: z.number().positive().max(1000) })
            .strict()
            .parse(body);
          engine.setSlowdown(factor);
          return { factor };
        });
      case "POST /v1/completions":
      case "POST /v1/chat/completions":
        return generate(req, res, url.pathname === "/v1/chat/completions");
      case "POST /v1/responses":
        return generate(req, res, true, true);
      case "POST /v1/embeddings":
        return embeddings(req, res);
      default:
        return sendJson(res, 404, { detail: "Not Found" });
    }
  }

  /** Runs a /sim/ control: JSON body in, JSON state out, 400 with the reason on bad input. */
  /** vLLM's runtime adapter endpoints: 200 with a plain-text message, or its JSON errors. */
  async function loraAdapter(
    req: http.IncomingMessage,
    res: http.ServerResponse,
    load: boolean,
  ): Promise<void> {
    let body: z.infer<typeof adapterRequest>;
    try {
      body = adapterRequest.parse(JSON.parse(await readBody(req, 64 * 1024)));
    } catch (err) {
      const message = err instanceof z.ZodError ? describeZodError(err) : (err as Error).message;
      return sendError(res, new VllmError(400, message));
    }
    const name = body.lora_name;
    if (load) {
      if (body.lora_path === undefined)
        return sendError(res, new VllmError(400, "Both 'lora_name' and 'lora_path' must be provided."));
      if (adapters.has(name) || name === model)
        return sendError(res, new VllmError(400, `The lora adapter '${name}' has already been loaded.`));
      if (adapters.size >= MAX_ADAPTERS)
        return sendError(res, new VllmError(400, `At most ${MAX_ADAPTERS} adapters can be loaded.`));
      adapters.set(name, body.lora_path);
      res.writeHead(200, { "content-type": "text/plain; charset=utf-8" });
      res.end(`Success: LoRA adapter '${name}' added successfully.`);
      return;
    }
    if (!adapters.delete(name))
      return sendError(res, new VllmError(404, `The lora adapter '${name}' cannot be found.`));
    res.writeHead(200, { "content-type": "text/plain; charset=utf-8" });
    res.end(`Success: LoRA adapter '${name}' removed successfully.`);
  }

  async function runControl(
    req: http.IncomingMessage,
    res: http.ServerResponse,
    apply: (body: unknown) => unknown,
  ) {
    try {
      const body = JSON.parse(await readBody(req, 64 * 1024)) as unknown;
      sendJson(res, 200, apply(body));
    } catch (err) {
      const message = err instanceof z.ZodError ? describeZodError(err) : (err as Error).message;
      sendJson(res, 400, new VllmError(400, message).toJson());
    }
  }

  /**
   * What every inference request goes through first: its id, its fault (refused, an injected status), its
   * body, readiness. Undefined when that already answered (or the client left).
   */
  async function admit(
    req: http.IncomingMessage,
    res: http.ServerResponse,
  ): Promise<{ requestId: string; fault: RequestFault; bodyText: string } | undefined> {
    const requestId = headerValue(req, "x-request-id") ?? randomBytes(16).toString("hex");
    res.setHeader("x-request-id", requestId);
    let fault: RequestFault;
    try {
      const header = headerValue(req, "x-sim-fault");
      fault = header !== undefined ? parseFaultHeader(header) : dice.roll();
    } catch (err) {
      sendError(res, new VllmError(400, (err as Error).message));
      return undefined;
    }
    if (fault.refuse) {
      req.socket.destroy();
      return undefined;
    }
    let bodyText: string;
    try {
      bodyText = await readBody(req, maxBodyBytes);
    } catch (err) {
      if (err instanceof BodyTooLarge) sendError(res, new VllmError(413, err.message), true);
      return undefined; // or the client went away while sending
    }
    if (Date.now() < readyAt || !control.healthy) {
      sendError(res, new VllmError(503, "The model is not ready"));
      return undefined;
    }
    if (control.draining) {
      sendError(res, new VllmError(503, "The server is draining"));
      return undefined;
    }
    if (fault.status !== undefined) {
      if (fault.retryAfterSeconds !== undefined)
        res.setHeader("retry-after", String(fault.retryAfterSeconds));
      sendError(res, new VllmError(fault.status, `Injected failure (status ${fault.status})`));
      return undefined;
    }
    return { requestId, fault, bodyText };
  }

  /** POST /v1/embeddings: the inputs' prefills run in the engine; one JSON answer (sim/embedding). */
  async function embeddings(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const arrivedAt = wallClock();
    const admitted = await admit(req, res);
    if (admitted === undefined) return;
    const gone = new AbortController();
    res.once("close", () => gone.abort());
    try {
      const prepared = prepareEmbeddings(
        admitted.bodyText,
        model,
        engine.options.maxModelLen,
        engine.options.embeddingSize,
      );
      const answer = await runEmbeddings(prepared, engine, model, admitted.requestId, gone.signal);
      recordSpan(req, admitted.requestId, arrivedAt, {
        promptTokens: answer.usage.prompt_tokens,
        completionTokens: 0,
      });
      sendJson(res, 200, answer);
    } catch (err) {
      if (!(err instanceof VllmError)) throw err;
      if (!res.destroyed) sendError(res, err);
    }
  }

  /** A completion, a chat completion, or (`responses`) a POST /v1/responses run as a chat. */
  async function generate(
    req: http.IncomingMessage,
    res: http.ServerResponse,
    chat: boolean,
    responses = false,
  ): Promise<void> {
    const arrivedAt = wallClock();
    const admitted = await admit(req, res);
    if (admitted === undefined) return;
    const { requestId, fault, bodyText } = admitted;

    let prepared: PreparedCompletion;
    let renderer: ResponsesRenderer | undefined;
    try {
      if (responses) {
        const r = prepareResponses(bodyText, model, engine.options, adapters);
        prepared = r.completion;
        renderer = responsesRenderer(
          requestId,
          r.completion.lora ?? model,
          Math.floor(Date.now() / 1000),
          r.echo,
        );
      } else prepared = prepareCompletion(bodyText, chat, model, engine.options, adapters);
    } catch (err) {
      if (err instanceof VllmError) return sendError(res, err);
      throw err;
    }
    open.add(res);
    res.once("close", () => open.delete(res));
    runCompletion(req, res, prepared, {
      engine,
      model: prepared.lora ?? model, // vLLM echoes the adapter's name
      fault,
      requestId,
      clock,
      onFirstToken: (firstTokenAt) => traces.set(requestId.slice(0, 128), [arrivedAt, firstTokenAt]),
      onEnd: (result) => recordSpan(req, requestId, arrivedAt, result),
      ...(renderer !== undefined ? { responses: renderer } : {}),
    });
  }

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port ?? 0, options.host ?? "127.0.0.1", () => {
      server.off("error", reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;
  const host = options.host ?? "127.0.0.1";

  return {
    model,
    url: `http://${host.includes(":") ? `[${host}]` : host}:${port}`,
    port,
    engine,
    metricsText: () => metrics.registry.metrics(),
    backlogBytes,
    writtenBytes,
    close: async () => {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      await tracer?.shutdown();
    },
  };
}

function headerValue(req: http.IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}
