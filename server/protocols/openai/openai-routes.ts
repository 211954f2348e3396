/**
 * The OpenAI-compatible REST surface: POST /v1/chat/completions and /v1/completions (JSON or SSE),
 * POST /v1/responses, POST /v1/embeddings and GET /v1/models, over HTTP/1.1 or HTTP/2. A request is read (openai-request.ts), run through the same
 * pipeline as gRPC, and answered in OpenAI's shapes (openai-response.ts, openai-errors.ts); errors never
 * carry upstream text.
 *
 * Streaming is pull-based: the next event is taken from the pipeline only when the socket has drained, so
 * a slow client holds back the replica's stream instead of filling the gateway's memory. A client that
 * disconnects aborts the request, and with it the upstream request.
 */
import { randomUUID } from "node:crypto";
import { Code, ConnectError } from "@connectrpc/connect";
import { BodyAborted, BodyTimeout, BodyTooLarge, readBody } from "../../../common/http/read-body.js";
import { resetClient } from "../../../common/http/reset-client.js";
import { type ResponsesRenderer, responsesRenderer } from "../../../common/openai/responses-events.js";
import type { GatewayConfig } from "../../config/gateway-config.js";
import { toClientError } from "../../errors/gateway-error.js";
import type { Pipeline } from "../../pipeline/pipeline.js";
import { type FirstTokenTiming, serverTiming } from "../../request/inference-request.js";
import { adaptersOf, type RoutingTable } from "../../routing/routing-table.js";
import { bearerOf } from "../../tenants/admission.js";
import { errorEvent, openAiError, sendBodyTimeout, sendBodyTooLarge, sendError } from "./openai-errors.js";
import {
  parseJsonObject,
  toEmbeddingsRequest,
  toInferenceRequest,
  toResponsesRequest,
} from "./openai-request.js";
import {
  completeBody,
  createEventWriter,
  createReplyCollector,
  type HttpRequest,
  type HttpResponse,
  isClosed,
  sendJson,
  streamRenderer,
  unixNow,
  write,
} from "./openai-response.js";

export interface OpenAiRoutes {
  /** Handles the request if it is one of the OpenAI routes; returns false otherwise. */
  handle(req: HttpRequest, res: HttpResponse): boolean;
}

export function createOpenAiRoutes(
  pipeline: Pipeline,
  table: RoutingTable,
  config: () => GatewayConfig,
): OpenAiRoutes {
  const created = unixNow();

  async function complete(req: HttpRequest, res: HttpResponse, chat: boolean): Promise<void> {
    const { limits, connections } = config();
    const exchange = openExchange(res, limits.maxTimeoutMs);
    const { requestId, control } = exchange;
    let started = false;
    try {
      const text = await readBody(req, limits.maxRequestBytes, connections.bodyTimeoutMs);
      const { request, stream, includeUsage } = toInferenceRequest(
        req,
        parseJsonObject(text),
        chat,
        requestId,
        control.signal,
        config(),
        exchange.deadlineAt,
      );
      const id = `${chat ? "chatcmpl" : "cmpl"}-${requestId}`;
      const render = streamRenderer(id, request.model, chat);
      const signal = control.signal;
      const reply = createReplyCollector(chat);
      const events = createEventWriter(res);
      for await (const event of pipeline.run({ ...request, onSlowReader: exchange.cutSlowReader })) {
        if (!stream) {
          if (event.type === "start") res.setHeader("server-timing", serverTiming(event.timing));
          if (event.type === "delta") reply.add(event);
          if (event.type === "finish") {
            exchange.ended = true;
            sendJson(res, 200, completeBody(id, request.model, chat, reply, event));
          }
          continue;
        }
        if (event.type === "start") {
          started = true;
          startEventStream(res, event.timing);
          if (chat) await events.write(render.roleChunk(), signal);
        } else if (event.type === "delta") {
          await events.write(render.delta(event), signal);
        } else if (event.type === "finish") {
          await events.write(render.finish(event), signal);
          if (includeUsage) await events.write(render.usage(event), signal);
          if (!signal.aborted) exchange.end("data: [DONE]\n\n");
        }
        // Leaving the loop returns the pipeline's generator: the request ends (cancelled) at once.
        if (signal.aborted) break;
      }
    } catch (err) {
      if (!started) return answerFailure(res, exchange, err);
      if (control.signal.aborted || isClosed(res)) return;
      // The stream has begun: the error goes in-band, then the stream ends.
      exchange.ended = true;
      await write(res, errorEvent(toClientError(err)), control.signal);
      res.end("data: [DONE]\n\n");
    } finally {
      exchange.close();
    }
  }

  /**
   * POST /v1/responses (OpenAI's Responses API): relayed to the replica as a chat completion and answered
   * as a Response object or its event stream (openai-responses.ts), pulled as the client reads, as the
   * chat stream is.
   */
  async function responses(req: HttpRequest, res: HttpResponse): Promise<void> {
    const { limits, connections } = config();
    const exchange = openExchange(res, limits.maxTimeoutMs);
    const { requestId, control } = exchange;
    const signal = control.signal;
    let started = false;
    let render: ResponsesRenderer | undefined;
    let reply = "";
    const events = createEventWriter(res);
    try {
      const text = await readBody(req, limits.maxRequestBytes, connections.bodyTimeoutMs);
      const parsed = toResponsesRequest(
        req,
        parseJsonObject(text),
        requestId,
        signal,
        config(),
        exchange.deadlineAt,
      );
      const { request, stream } = parsed;
      render = responsesRenderer(requestId, request.model, unixNow(), parsed.echo);
      for await (const event of pipeline.run({ ...request, onSlowReader: exchange.cutSlowReader })) {
        if (event.type === "start") {
          if (!stream) res.setHeader("server-timing", serverTiming(event.timing));
          else {
            started = true;
            startEventStream(res, event.timing);
            await events.write(render.opening(), signal);
          }
        } else if (event.type === "delta") {
          reply += event.text;
          if (stream && event.text !== "") await events.write(render.delta(event.text), signal);
        } else if (event.type === "finish") {
          if (!stream) {
            exchange.ended = true;
            sendJson(res, 200, render.body(reply, event));
          } else {
            await events.write(render.closing(reply, event), signal);
            if (!signal.aborted) exchange.end("");
          }
        }
        if (signal.aborted) break;
      }
    } catch (err) {
      if (!started || render === undefined) return answerFailure(res, exchange, err);
      if (signal.aborted || isClosed(res)) return;
      exchange.ended = true;
      const { code, message } = (
        openAiError(toClientError(err)).body as { error: { code: string; message: string } }
      ).error;
      await write(res, render.failed(code, message, reply), signal);
      res.end();
    } finally {
      exchange.close();
    }
  }

  /**
   * POST /v1/embeddings: one JSON answer in vLLM's shape, the vectors as floats or, when asked, base64
   * (little-endian float32, as vLLM and OpenAI encode them). Runs through the pipeline as every request.
   * The answer is written one vector at a time as the client reads it (floats as JSON text take about five
   * times their float32 bytes: one string of all of them would be the largest thing the gateway holds); a
   * client that takes longer than timeouts.slowReaderMs to read one slice of it (64 vectors) is cut, as a
   * stream's slow reader is.
   */
  async function embeddings(req: HttpRequest, res: HttpResponse): Promise<void> {
    const { limits, connections } = config();
    const exchange = openExchange(res, limits.maxTimeoutMs);
    const { requestId, control } = exchange;
    try {
      const text = await readBody(req, limits.maxRequestBytes, connections.bodyTimeoutMs);
      const { request, base64 } = toEmbeddingsRequest(
        req,
        parseJsonObject(text),
        requestId,
        control.signal,
        config(),
        exchange.deadlineAt,
      );
      // Written while the pipeline holds each event (the request in flight, its queue slot taken, its
      // reader watched per slice of vectors), so that answers being written count against the limits.
      let index = 0;
      for await (const event of pipeline.run({ ...request, onSlowReader: exchange.cutSlowReader })) {
        if (event.type === "start") res.setHeader("server-timing", serverTiming(event.timing));
        else if (event.type === "embeddings") {
          if (index === 0) {
            res.writeHead(200, { "content-type": "application/json" });
            const head = {
              id: `embd-${requestId}`,
              object: "list",
              created: unixNow(),
              model: request.model,
            };
            await write(res, `${JSON.stringify(head).slice(0, -1)},"data":[`, control.signal);
          }
          for (const v of event.vectors) {
            if (control.signal.aborted) break;
            const item = { index, object: "embedding", embedding: base64 ? float32Base64(v) : Array.from(v) };
            await write(res, `${index > 0 ? "," : ""}${JSON.stringify(item)}`, control.signal);
            index++;
          }
        } else if (event.type === "finish") {
          const promptTokens = event.usage.promptTokens;
          const usage = { prompt_tokens: promptTokens, total_tokens: promptTokens, completion_tokens: 0 };
          if (!control.signal.aborted) exchange.end(`],"usage":${JSON.stringify(usage)}}`);
        }
        if (control.signal.aborted) break;
      }
    } catch (err) {
      if (!res.headersSent) answerFailure(res, exchange, err);
    } finally {
      exchange.close();
    }
  }

  function listModels(req: HttpRequest, res: HttpResponse): void {
    let visible: (model: string, adapter?: string) => boolean;
    try {
      const auth = req.headers.authorization;
      visible = pipeline.modelFilter(bearerOf(Array.isArray(auth) ? auth[0] : auth));
    } catch (err) {
      sendError(res, toClientError(err));
      return;
    }
    sendJson(res, 200, {
      object: "list",
      data: table.models().flatMap((m) => [
        ...(visible(m.name) ? [{ id: m.name, object: "model", created, owned_by: "kinfer" }] : []),
        // Its LoRA adapters (those the key may use), under it, as vLLM lists them.
        ...adaptersOf(m)
          .filter((a) => visible(m.name, a))
          .map((a) => ({
            id: a,
            object: "model",
            created,
            owned_by: "kinfer",
            parent: m.name,
          })),
      ]),
    });
  }

  return {
    handle(req, res) {
      const path = (req.url ?? "").split("?")[0];
      const route = `${req.method} ${path}`;
      if (route === "POST /v1/chat/completions" || route === "POST /v1/completions") {
        complete(req, res, path === "/v1/chat/completions").catch(() => {
          if (!res.headersSent)
            sendJson(res, 500, { error: { message: "internal error", type: "server_error" } });
        });
        return true;
      }
      if (route === "POST /v1/responses") {
        responses(req, res).catch(() => {
          if (!res.headersSent)
            sendJson(res, 500, { error: { message: "internal error", type: "server_error" } });
        });
        return true;
      }
      if (route === "POST /v1/embeddings") {
        embeddings(req, res).catch(() => {
          if (!res.headersSent)
            sendJson(res, 500, { error: { message: "internal error", type: "server_error" } });
        });
        return true;
      }
      if (route === "GET /v1/models") {
        listModels(req, res);
        return true;
      }
      if (path?.startsWith("/v1/")) {
        sendJson(res, 404, { error: { message: `no route ${route}`, type: "invalid_request_error" } });
        return true;
      }
      return false;
    },
  };
}

/** What every POST handler starts with: its id, its deadline, and a cancel when the client leaves first. */
interface Exchange {
  readonly requestId: string;
  /** Aborted by the deadline (DEADLINE_EXCEEDED) or by the client going away (CANCELED). */
  readonly control: AbortController;
  /** performance.now() at the deadline. */
  readonly deadlineAt: number;
  /** Set once the handler has answered (or begun its error answer): a close after it is no cancel. */
  ended: boolean;
  /** Ends the response with `text`. */
  end(text: string): void;
  /** Cuts a client that stops reading and cancels its request (the pipeline's onSlowReader). */
  cutSlowReader(): void;
  /** Clears the deadline; a response cut mid-way (by the client or the deadline) has its socket released. */
  close(): void;
}

function openExchange(res: HttpResponse, maxTimeoutMs: number): Exchange {
  const requestId = randomUUID();
  res.setHeader("x-request-id", requestId);
  const control = new AbortController();
  const deadline = setTimeout(
    () => control.abort(new ConnectError("the request took too long", Code.DeadlineExceeded)),
    maxTimeoutMs,
  );
  const exchange: Exchange = {
    requestId,
    control,
    deadlineAt: performance.now() + maxTimeoutMs,
    ended: false,
    end(text) {
      exchange.ended = true;
      res.end(text);
    },
    cutSlowReader() {
      control.abort(new ConnectError("the client stopped reading", Code.Canceled));
      resetClient(res);
    },
    close() {
      clearTimeout(deadline);
      if (!exchange.ended && !isClosed(res)) resetClient(res);
    },
  };
  // The client went away if the response closes before this request ended it: a closed HTTP/1.1 socket
  // or an HTTP/2 RST_STREAM. (writableFinished is no guide after an HTTP/2 reset.)
  res.once("close", () => {
    if (!exchange.ended) control.abort(new ConnectError("the client went away", Code.Canceled));
  });
  return exchange;
}

/** The head of an SSE answer (chat and completion streams, the Responses API's event stream). */
function startEventStream(res: HttpResponse, timing: FirstTokenTiming): void {
  res.writeHead(200, {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
    "server-timing": serverTiming(timing),
  });
}

/** Answers a failure before the response began (nothing, if the client is gone or cancelled). */
function answerFailure(res: HttpResponse, exchange: Exchange, err: unknown): void {
  if (err instanceof BodyTooLarge) sendBodyTooLarge(res, err.message);
  else if (err instanceof BodyTimeout) sendBodyTimeout(res, err.message);
  else if (!(err instanceof BodyAborted || exchange.control.signal.aborted || isClosed(res))) {
    exchange.ended = true;
    sendError(res, toClientError(err));
  }
}

/** A vector as OpenAI's base64 encoding_format: its float32 components, little-endian. */
function float32Base64(v: Float32Array): string {
  const bytes = Buffer.alloc(v.length * 4);
  for (let i = 0; i < v.length; i++) bytes.writeFloatLE(v[i] as number, i * 4);
  return bytes.toString("base64");
}
