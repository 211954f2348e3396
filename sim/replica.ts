/**
 * One simulated vLLM replica: an HTTP/1.1 server with vLLM's OpenAI-compatible API in front of the engine
 * model (sim/engine), reporting vLLM's metrics and injecting faults on request.
 *
 * Endpoints, as vLLM serves them: POST /v1/completions and /v1/chat/completions (JSON, or SSE with
 * `stream: true`), GET /v1/models, GET /health, GET /metrics, GET /version. And the simulator's own
 * controls under /sim/: GET|POST /sim/faults (fault rates), POST /sim/health {"healthy"}, POST /sim/drain
 * {"draining"}, POST /sim/slowdown {"factor"}, GET /sim/stats (the engine's state as JSON), GET /sim/traces
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
import { LRUCache } from "lru-cache";
import { z } from "zod";
import { type Clock, createRealClock } from "./clock.js";
import { createEngine, type Engine, type SequenceResult } from "./engine/engine.js";
import { type EngineOptions, resolveEngineOptions } from "./engine/engine-options.js";
import { createFaultDice, type FaultRates, parseFaultHeader, type RequestFault } from "./faults.js";
import {
  type ChatCompletionRequest,
  type CompletionRequest,
  chatCompletionRequest,
  completionRequest,
  describeZodError,
  messageText,
} from "./http/openai-request.js";
import { VllmError } from "./http/vllm-error.js";
import { createReplicaMetrics } from "./metrics.js";
import { renderChatTemplate } from "./text/chat-template.js";
import { type OutputPlan, planOutput } from "./text/output-plan.js";
import { tokenize } from "./text/tokenizer.js";

/** How to start a replica. */
export interface ReplicaOptions {
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
}

/** A running replica. */
export interface Replica {
  readonly model: string;
  /** Base URL, e.g. http://127.0.0.1:8001 */
  readonly url: string;
  readonly port: number;
  readonly engine: Engine;
  /** The Prometheus text of /metrics. */
  metricsText(): Promise<string>;
  /** Stops listening, ends open connections (aborting their sequences) and resolves when closed. */
  close(): Promise<void>;
}

const DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024;
const VERSION = "0.12.0+kinfer-sim";

/** Starts a replica and resolves once it listens. Throws if an option is invalid. */
export async function startReplica(options: ReplicaOptions): Promise<Replica> {
  const model = z.string().min(1).parse(options.model);
  const clock = options.clock ?? createRealClock();
  const metrics = createReplicaMetrics(model);
  const engine = createEngine(resolveEngineOptions(options.engine), clock, metrics.observer);
  metrics.bind(engine);
  const dice = createFaultDice(options.faults ?? {}, options.seed ?? 1);
  const maxBodyBytes = options.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
  const readyAt = Date.now() + (options.startupDelayMs ?? 0);
  const control = { healthy: true, draining: false };
  const created = Math.floor(Date.now() / 1000);
  /** Request id -> [arrived, first token written], wall-clock ms with sub-ms precision. */
  const traces = new LRUCache<string, [number, number]>({ max: 50_000 });

  const server = http.createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      // Only a bug reaches here; answer 500 without details and keep serving.
      console.error("kinfer-sim: unexpected error", err);
      if (!res.headersSent) sendJson(res, 500, new VllmError(500, "Internal server error").toJson());
      else res.destroy();
    });
  });
  server.keepAliveTimeout = 65_000;

  function ready(): boolean {
    return Date.now() >= readyAt && control.healthy && !control.draining;
  }

  async function handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", "http://sim");
    const route = `${req.method} ${url.pathname}`;
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
          ],
        });
      case "GET /sim/stats":
        return sendJson(res, 200, {
          ...engine.stats(),
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
      default:
        return sendJson(res, 404, { detail: "Not Found" });
    }
  }

  /** Runs a /sim/ control: JSON body in, JSON state out, 400 with the reason on bad input. */
  async function runControl(
    req: http.IncomingMessage,
    res: http.ServerResponse,
    apply: (body: unknown) => unknown,
  ) {
    try {
      const body = JSON.parse((await readBody(req, 64 * 1024)).toString("utf8")) as unknown;
      sendJson(res, 200, apply(body));
    } catch (err) {
      const message = err instanceof z.ZodError ? describeZodError(err) : (err as Error).message;
      sendJson(res, 400, new VllmError(400, message).toJson());
    }
  }

  async function generate(req: http.IncomingMessage, res: http.ServerResponse, chat: boolean): Promise<void> {
    const arrivedAt = wallClock();
    const requestId = headerValue(req, "x-request-id") ?? randomBytes(16).toString("hex");
    res.setHeader("x-request-id", requestId);
    let fault: RequestFault;
    try {
      const header = headerValue(req, "x-sim-fault");
      fault = header !== undefined ? parseFaultHeader(header) : dice.roll();
    } catch (err) {
      return sendError(res, new VllmError(400, (err as Error).message));
    }
    if (fault.refuse) {
      req.socket.destroy();
      return;
    }
    let bodyText: string;
    try {
      bodyText = (await readBody(req, maxBodyBytes)).toString("utf8");
    } catch (err) {
      if (err instanceof VllmError) return sendError(res, err, true);
      return; // the client went away while sending
    }
    if (Date.now() < readyAt || !control.healthy) {
      return sendError(res, new VllmError(503, "The model is not ready"));
    }
    if (control.draining) return sendError(res, new VllmError(503, "The server is draining"));
    if (fault.status !== undefined) {
      if (fault.retryAfterSeconds !== undefined)
        res.setHeader("retry-after", String(fault.retryAfterSeconds));
      return sendError(res, new VllmError(fault.status, `Injected failure (status ${fault.status})`));
    }

    let prepared: PreparedRequest;
    try {
      prepared = prepare(bodyText, chat);
    } catch (err) {
      if (err instanceof VllmError) return sendError(res, err);
      throw err;
    }
    run(req, res, prepared, fault, chat, requestId, (firstTokenAt) =>
      traces.set(requestId.slice(0, 128), [arrivedAt, firstTokenAt]),
    );
  }

  interface PreparedRequest {
    readonly promptTokens: number[];
    readonly plan: OutputPlan;
    readonly stream: boolean;
    readonly includeUsage: boolean;
  }

  /** Parses and validates a body, tokenizes the prompt and plans the output; throws VllmError. */
  function prepare(bodyText: string, chat: boolean): PreparedRequest {
    let json: unknown;
    try {
      json = JSON.parse(bodyText);
    } catch (err) {
      throw new VllmError(400, `Invalid JSON body: ${(err as Error).message}`);
    }
    let body: ChatCompletionRequest | CompletionRequest;
    let promptTokens: number[];
    let requested: number | null | undefined;
    if (chat) {
      const parsed = chatCompletionRequest.safeParse(json);
      if (!parsed.success) throw new VllmError(400, describeZodError(parsed.error));
      body = parsed.data;
      const messages = parsed.data.messages.map((m) => ({ role: m.role, content: messageText(m.content) }));
      promptTokens = tokenize(renderChatTemplate(messages));
      requested = parsed.data.max_completion_tokens ?? parsed.data.max_tokens;
    } else {
      const parsed = completionRequest.safeParse(json);
      if (!parsed.success) throw new VllmError(400, describeZodError(parsed.error));
      body = parsed.data;
      const prompt = parsed.data.prompt;
      if (typeof prompt === "string") promptTokens = tokenize(prompt);
      else if (typeof prompt[0] === "string") promptTokens = tokenize(prompt[0]);
      else promptTokens = prompt as number[];
      requested = parsed.data.max_tokens;
    }
    if (body.model !== undefined && body.model !== null && body.model !== model) {
      throw new VllmError(404, `The model \`${body.model}\` does not exist.`);
    }
    if (promptTokens.length === 0) throw new VllmError(400, "The prompt is empty.");
    const maxModelLen = engine.options.maxModelLen;
    if (promptTokens.length >= maxModelLen || promptTokens.length + (requested ?? 0) > maxModelLen) {
      throw new VllmError(
        400,
        `This model's maximum context length is ${maxModelLen} tokens. However, you requested ` +
          `${promptTokens.length + (requested ?? 0)} tokens (${promptTokens.length} in the messages, ` +
          `${requested ?? 0} in the completion). Please reduce the length of the messages or completion.`,
      );
    }
    const stop =
      body.stop === undefined || body.stop === null
        ? []
        : typeof body.stop === "string"
          ? [body.stop]
          : body.stop;
    const plan = planOutput({
      maxTokens: requested ?? maxModelLen - promptTokens.length,
      seed: mixSeed(body.seed ?? Math.floor(Math.random() * 2 ** 32), promptTokens),
      stop: stop.filter((s) => s.length > 0),
      ignoreEos: body.ignore_eos ?? false,
      meanOutputTokens: engine.options.meanOutputTokens,
    });
    return {
      promptTokens,
      plan,
      stream: body.stream ?? false,
      includeUsage: body.stream_options?.include_usage ?? false,
    };
  }

  /** Submits the sequence and relays its tokens as SSE chunks or one JSON body. */
  function run(
    req: http.IncomingMessage,
    res: http.ServerResponse,
    prepared: PreparedRequest,
    fault: RequestFault,
    chat: boolean,
    requestId: string,
    onFirstToken: (wallClockMs: number) => void,
  ): void {
    const { plan, stream } = prepared;
    const id = `${chat ? "chatcmpl" : "cmpl"}-${requestId}`;
    const createdAt = Math.floor(Date.now() / 1000);
    const base = {
      id,
      object: chat ? "chat.completion.chunk" : "text_completion",
      created: createdAt,
      model,
    };
    const gate = createGate(fault, clock);
    let text = "";
    let ended = false;

    const chunk = (choice: Record<string, unknown>, extra: Record<string, unknown> = {}) =>
      `data: ${JSON.stringify({ ...base, choices: [{ index: 0, ...choice }], ...extra })}\n\n`;

    const handle = engine.submit(
      {
        promptTokens: prepared.promptTokens,
        targetTokens: plan.deltas.length,
        finishReason: plan.finishReason,
        outputTokens: plan.tokenIds,
        ...(fault.slow !== undefined ? { slowFactor: fault.slow } : {}),
      },
      {
        onToken(index) {
          if (fault.dropAfter === index) return drop();
          if (stream && index === 0) {
            gate.write(() => {
              onFirstToken(wallClock());
              res.writeHead(200, {
                "content-type": "text/event-stream; charset=utf-8",
                "cache-control": "no-cache",
              });
              if (chat)
                res.write(
                  chunk({ delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null }),
                );
            });
          }
          if (fault.errorAfter === index) return failMidStream();
          const delta = plan.deltas[index] ?? "";
          text += delta;
          if (!stream) return;
          const piece = chat
            ? chunk({ delta: { content: delta }, logprobs: null, finish_reason: null })
            : chunk({ text: delta, logprobs: null, finish_reason: null, stop_reason: null }, { usage: null });
          gate.write(() => res.write(piece), index + 1);
        },
        onFinish(result) {
          if (ended) return;
          ended = true;
          if (result.reason === "abort") return; // the client left, or a fault ended the stream
          gate.write(() => finishResponse(result));
        },
      },
    );

    /** vLLM's in-band error event then [DONE] (or a 500 for a non-streaming request). */
    function failMidStream() {
      ended = true;
      handle.abort();
      const error = new VllmError(500, "Injected failure after the stream began");
      gate.write(() => {
        if (!stream) return sendError(res, error);
        res.write(`data: ${JSON.stringify(error.toJson())}\n\n`);
        res.end("data: [DONE]\n\n");
      });
    }

    /** Cuts the connection once what was written has been flushed: no finish chunk, no [DONE]. */
    function drop() {
      ended = true;
      handle.abort();
      gate.write(() => (res.socket ? res.socket.end() : res.destroy()));
    }

    function finishResponse(result: SequenceResult) {
      const usage = {
        prompt_tokens: result.promptTokens,
        total_tokens: result.promptTokens + result.completionTokens,
        completion_tokens: result.completionTokens,
        prompt_tokens_details: { cached_tokens: result.cachedTokens },
      };
      const stopReason = plan.stopReason ?? null;
      if (!stream) {
        const choice = chat
          ? {
              index: 0,
              message: { role: "assistant", content: text, tool_calls: [] },
              logprobs: null,
              finish_reason: result.reason,
              stop_reason: stopReason,
            }
          : { index: 0, text, logprobs: null, finish_reason: result.reason, stop_reason: stopReason };
        sendJson(res, 200, {
          id,
          object: chat ? "chat.completion" : "text_completion",
          created: createdAt,
          model,
          choices: [choice],
          usage,
        });
        return;
      }
      res.write(
        chat
          ? chunk({
              delta: { content: "" },
              logprobs: null,
              finish_reason: result.reason,
              stop_reason: stopReason,
            })
          : chunk(
              { text: "", logprobs: null, finish_reason: result.reason, stop_reason: stopReason },
              { usage: null },
            ),
      );
      if (prepared.includeUsage) res.write(`data: ${JSON.stringify({ ...base, choices: [], usage })}\n\n`);
      res.end("data: [DONE]\n\n");
    }

    // A client that goes away aborts the sequence at once and frees its KV blocks.
    res.on("close", () => {
      gate.cancel();
      if (!res.writableFinished) handle.abort();
    });
    req.on("error", () => handle.abort());
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
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

/**
 * Holds writes back while a stall fault is in effect: with `stall=<ms>` and `stall-after=<n>`, nothing is
 * written from the n-th token's write until ms after it was due. Writes keep their order.
 */
function createGate(fault: RequestFault, clock: Clock) {
  const stallAfter = fault.stallAfter ?? 0;
  const queued: (() => void)[] = [];
  let openAt: number | undefined =
    fault.stallMs !== undefined && stallAfter === 0 ? clock.now() + fault.stallMs : undefined;
  let timerSet = false;
  let cancel: (() => void) | undefined;

  function flush() {
    for (const write of queued.splice(0)) write();
  }

  return {
    /** Writes now, or when the stall ends. `tokenCount` is the number of tokens this write completes. */
    write(fn: () => void, tokenCount = 0) {
      if (
        openAt === undefined &&
        fault.stallMs !== undefined &&
        stallAfter > 0 &&
        tokenCount === stallAfter + 1
      ) {
        openAt = clock.now() + fault.stallMs;
      }
      if (openAt === undefined || clock.now() >= openAt) {
        if (queued.length === 0) return fn();
        queued.push(fn);
        return flush();
      }
      queued.push(fn);
      if (!timerSet) {
        timerSet = true;
        cancel = clock.setTimer(openAt, flush);
      }
    },
    cancel() {
      cancel?.();
      queued.length = 0;
    },
  };
}

/** Milliseconds since the epoch with sub-millisecond precision, comparable across processes. */
function wallClock(): number {
  return performance.timeOrigin + performance.now();
}

/** Mixes the request's seed with its prompt so that different prompts with one seed differ, as with vLLM. */
function mixSeed(seed: number, promptTokens: readonly number[]): number {
  let h = (seed ^ 0x9e3779b9) >>> 0;
  for (const t of promptTokens) h = Math.imul(h ^ t, 0x01000193) >>> 0;
  return h;
}

function headerValue(req: http.IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

/** Reads a body up to `limit` bytes; throws VllmError 413 beyond it. */
function readBody(req: http.IncomingMessage, limit: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        req.off("data", onData);
        req.resume(); // drain the rest without keeping it
        reject(new VllmError(413, `Request body exceeds ${limit} bytes`));
        return;
      }
      chunks.push(chunk);
    };
    req.on("data", onData);
    req.once("end", () => resolve(Buffer.concat(chunks)));
    req.once("error", reject);
  });
}

function sendJson(res: http.ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
  res.end(text);
}

function sendError(res: http.ServerResponse, err: VllmError, close = false): void {
  if (close) res.setHeader("connection", "close");
  sendJson(res, err.status, err.toJson());
}
