/**
 * The OpenAI-compatible REST surface: POST /v1/chat/completions and /v1/completions (JSON or SSE),
 * POST /v1/embeddings and GET /v1/models, over HTTP/1.1 or HTTP/2. A request is read (openai-request.ts), run through the same
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
import type { GatewayConfig } from "../../config/gateway-config.js";
import { toClientError } from "../../errors/gateway-error.js";
import type { Pipeline } from "../../pipeline/pipeline.js";
import { serverTiming } from "../../request/inference-request.js";
import type { RoutingTable } from "../../routing/routing-table.js";
import { bearerOf } from "../../tenants/admission.js";
import { errorEvent, sendBodyTimeout, sendBodyTooLarge, sendError } from "./openai-errors.js";
import { parseJsonObject, toEmbeddingsRequest, toInferenceRequest } from "./openai-request.js";
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
    const requestId = randomUUID();
    res.setHeader("x-request-id", requestId);
    const { limits, connections } = config();
    const control = new AbortController();
    const deadline = setTimeout(
      () => control.abort(new ConnectError("the request took too long", Code.DeadlineExceeded)),
      limits.maxTimeoutMs,
    );
    // The client went away if the response closes before this request ended it: a closed HTTP/1.1 socket
    // or an HTTP/2 RST_STREAM. (writableFinished is no guide after an HTTP/2 reset.)
    let ended = false;
    const end = (text: string) => {
      ended = true;
      res.end(text);
    };
    res.once("close", () => {
      if (!ended) control.abort(new ConnectError("the client went away", Code.Canceled));
    });
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
        performance.now() + limits.maxTimeoutMs,
      );
      const id = `${chat ? "chatcmpl" : "cmpl"}-${requestId}`;
      const render = streamRenderer(id, request.model, chat);
      const signal = control.signal;
      const reply = createReplyCollector(chat);
      const events = createEventWriter(res);
      // A client that stops reading is cut, and its request cancelled (the pipeline decides when).
      const onSlowReader = () => {
        control.abort(new ConnectError("the client stopped reading", Code.Canceled));
        resetClient(res);
      };
      for await (const event of pipeline.run({ ...request, onSlowReader })) {
        if (!stream) {
          if (event.type === "start") res.setHeader("server-timing", serverTiming(event.timing));
          if (event.type === "delta") reply.add(event);
          if (event.type === "finish") {
            ended = true;
            sendJson(res, 200, completeBody(id, request.model, chat, reply, event));
          }
          continue;
        }
        if (event.type === "start") {
          started = true;
          res.writeHead(200, {
            "content-type": "text/event-stream; charset=utf-8",
            "cache-control": "no-cache",
            "server-timing": serverTiming(event.timing),
          });
          if (chat) await events.write(render.roleChunk(), signal);
        } else if (event.type === "delta") {
          await events.write(render.delta(event), signal);
        } else if (event.type === "finish") {
          await events.write(render.finish(event), signal);
          if (includeUsage) await events.write(render.usage(event), signal);
          if (!signal.aborted) end("data: [DONE]\n\n");
        }
        // Leaving the loop returns the pipeline's generator: the request ends (cancelled) at once.
        if (signal.aborted) break;
      }
    } catch (err) {
      if (err instanceof BodyTooLarge) return sendBodyTooLarge(res, err.message);
      if (err instanceof BodyTimeout) return sendBodyTimeout(res, err.message);
      if (err instanceof BodyAborted || control.signal.aborted || isClosed(res)) return;
      const clientError = toClientError(err);
      ended = true;
      if (!started) return sendError(res, clientError);
      // The stream has begun: the error goes in-band, then the stream ends.
      await write(res, errorEvent(clientError), control.signal);
      res.end("data: [DONE]\n\n");
    } finally {
      clearTimeout(deadline);
      // A stream cut by the client (or its deadline) mid-way: nothing more to send, release the socket.
      if (!ended && !isClosed(res)) resetClient(res);
    }
  }

  /**
   * POST /v1/embeddings: one JSON answer in vLLM's shape, the vectors as floats or, when asked, base64
   * (little-endian float32, as vLLM and OpenAI encode them). Runs through the pipeline as every request.
   */
  async function embeddings(req: HttpRequest, res: HttpResponse): Promise<void> {
    const requestId = randomUUID();
    res.setHeader("x-request-id", requestId);
    const { limits, connections } = config();
    const control = new AbortController();
    const deadline = setTimeout(
      () => control.abort(new ConnectError("the request took too long", Code.DeadlineExceeded)),
      limits.maxTimeoutMs,
    );
    let answered = false;
    res.once("close", () => {
      if (!answered) control.abort(new ConnectError("the client went away", Code.Canceled));
    });
    try {
      const text = await readBody(req, limits.maxRequestBytes, connections.bodyTimeoutMs);
      const { request, base64 } = toEmbeddingsRequest(
        req,
        parseJsonObject(text),
        requestId,
        control.signal,
        config(),
        performance.now() + limits.maxTimeoutMs,
      );
      let vectors: readonly Float32Array[] = [];
      for await (const event of pipeline.run(request)) {
        if (event.type === "start") res.setHeader("server-timing", serverTiming(event.timing));
        else if (event.type === "embeddings") vectors = event.vectors;
        else if (event.type === "finish") {
          answered = true;
          const promptTokens = event.usage.promptTokens;
          sendJson(res, 200, {
            id: `embd-${requestId}`,
            object: "list",
            created: unixNow(),
            model: request.model,
            data: vectors.map((v, index) => ({
              index,
              object: "embedding",
              embedding: base64 ? float32Base64(v) : Array.from(v),
            })),
            usage: { prompt_tokens: promptTokens, total_tokens: promptTokens, completion_tokens: 0 },
          });
        }
      }
    } catch (err) {
      if (err instanceof BodyTooLarge) return sendBodyTooLarge(res, err.message);
      if (err instanceof BodyTimeout) return sendBodyTimeout(res, err.message);
      if (err instanceof BodyAborted || control.signal.aborted || isClosed(res)) return;
      answered = true;
      sendError(res, toClientError(err));
    } finally {
      clearTimeout(deadline);
    }
  }

  function listModels(req: HttpRequest, res: HttpResponse): void {
    let visible: (model: string) => boolean;
    try {
      const auth = req.headers.authorization;
      visible = pipeline.modelFilter(bearerOf(Array.isArray(auth) ? auth[0] : auth));
    } catch (err) {
      sendError(res, toClientError(err));
      return;
    }
    sendJson(res, 200, {
      object: "list",
      data: table
        .models()
        .filter((m) => visible(m.name))
        .map((m) => ({ id: m.name, object: "model", created, owned_by: "kinfer" })),
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

/** A vector as OpenAI's base64 encoding_format: its float32 components, little-endian. */
function float32Base64(v: Float32Array): string {
  const bytes = Buffer.alloc(v.length * 4);
  for (let i = 0; i < v.length; i++) bytes.writeFloatLE(v[i] as number, i * 4);
  return bytes.toString("base64");
}
