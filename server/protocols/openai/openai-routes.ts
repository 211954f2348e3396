/**
 * The OpenAI-compatible REST surface: POST /v1/chat/completions and /v1/completions (JSON or SSE) and
 * GET /v1/models, over HTTP/1.1 or HTTP/2. Requests are validated, turned into InferenceRequests and run
 * through the same pipeline as gRPC; fields the gateway does not interpret are forwarded to vLLM as they
 * are. Responses and errors have OpenAI's shapes; errors never carry upstream text.
 *
 * Streaming is pull-based: the next event is taken from the pipeline only when the socket has drained, so
 * a slow client holds back the replica's stream instead of filling the gateway's memory. A client that
 * disconnects aborts the request, and with it the upstream request.
 */
import { randomUUID } from "node:crypto";
import type * as http from "node:http";
import type * as http2 from "node:http2";
import { Code, ConnectError } from "@connectrpc/connect";
import { z } from "zod";
import type { GatewayConfig } from "../../config/gateway-config.js";
import { invalidRequest, openAiError, toClientError } from "../../errors/gateway-error.js";
import {
  type ChatTurn,
  type InferenceEvent,
  type InferenceRequest,
  type SamplingParams,
  serverTiming,
} from "../../inference/inference-request.js";
import type { Pipeline } from "../../inference/pipeline.js";
import type { RoutingTable } from "../../routing/routing-table.js";
import { BodyTooLarge, readBody } from "../../serving/read-body.js";
import { bearerOf } from "../../tenants/admission.js";

export type HttpRequest = http.IncomingMessage | http2.Http2ServerRequest;
export type HttpResponse = http.ServerResponse | http2.Http2ServerResponse;

const opt = <T extends z.ZodType>(schema: T) => schema.nullish();

/** The fields the gateway interprets; every other field is passed through to vLLM. */
const sampling = {
  model: z.string().min(1, { error: "model is required" }),
  max_tokens: opt(z.number().int().positive()),
  temperature: opt(z.number()),
  top_p: opt(z.number()),
  top_k: opt(z.number().int()),
  seed: opt(z.number().int().min(-Number.MAX_SAFE_INTEGER).max(Number.MAX_SAFE_INTEGER)),
  presence_penalty: opt(z.number()),
  frequency_penalty: opt(z.number()),
  stop: opt(z.union([z.string(), z.array(z.string())])),
  stream: opt(z.boolean()),
  stream_options: opt(z.looseObject({ include_usage: opt(z.boolean()) })),
  n: opt(z.literal(1, { error: "only n=1 is supported" })),
  user: opt(z.string().max(256)),
};

const textPart = z.looseObject({ type: z.literal("text"), text: z.string() });

const chatSchema = z.looseObject({
  ...sampling,
  max_completion_tokens: opt(z.number().int().positive()),
  messages: z
    .array(
      z.looseObject({
        role: z.enum(["system", "user", "assistant", "tool", "developer"]),
        content: opt(z.union([z.string(), z.array(textPart)])),
        name: opt(z.string()),
      }),
    )
    .min(1, { error: "messages must not be empty" }),
});

const completionSchema = z.looseObject({
  ...sampling,
  prompt: z.union([
    z.string(),
    z.array(z.string()).length(1, { error: "only one prompt per request is supported" }),
  ]),
});

const INTERPRETED = new Set([...Object.keys(chatSchema.shape), ...Object.keys(completionSchema.shape)]);

function describe(error: z.ZodError): string {
  return error.issues
    .slice(0, 3)
    .map((i) => `${i.path.length > 0 ? i.path.join(".") : "body"}: ${i.message}`)
    .join("; ");
}

export interface OpenAiRoutes {
  /** Handles the request if it is one of the OpenAI routes; returns false otherwise. */
  handle(req: HttpRequest, res: HttpResponse): boolean;
}

export function createOpenAiRoutes(
  pipeline: Pipeline,
  table: RoutingTable,
  config: () => GatewayConfig,
): OpenAiRoutes {
  const created = Math.floor(Date.now() / 1000);

  function sendJson(res: HttpResponse, status: number, body: unknown, headers: Record<string, string> = {}) {
    const text = JSON.stringify(body);
    res.writeHead(status, { "content-type": "application/json", ...headers });
    res.end(text);
  }

  function sendError(res: HttpResponse, err: ConnectError) {
    const { status, body, retryAfterSeconds } = openAiError(err);
    sendJson(
      res,
      status,
      body,
      retryAfterSeconds !== undefined ? { "retry-after": String(retryAfterSeconds) } : {},
    );
  }

  function toInferenceRequest(
    req: HttpRequest,
    body: Record<string, unknown>,
    chat: boolean,
    requestId: string,
    signal: AbortSignal,
  ): { request: InferenceRequest; stream: boolean; includeUsage: boolean } {
    const parsed = (chat ? chatSchema : completionSchema).safeParse(body);
    if (!parsed.success) throw invalidRequest(describe(parsed.error));
    const b = parsed.data as z.infer<typeof chatSchema> & z.infer<typeof completionSchema>;
    const c = config();
    const header = (name: string) => {
      const v = req.headers[name];
      return (Array.isArray(v) ? v[0] : v) ?? "";
    };
    const stop =
      b.stop === undefined || b.stop === null ? [] : typeof b.stop === "string" ? [b.stop] : b.stop;
    const maxTokens = (chat ? b.max_completion_tokens : undefined) ?? b.max_tokens ?? undefined;
    const s: SamplingParams = {
      stop,
      ...(maxTokens !== undefined ? { maxTokens } : {}),
      ...(b.temperature != null ? { temperature: b.temperature } : {}),
      ...(b.top_p != null ? { topP: b.top_p } : {}),
      ...(b.top_k != null ? { topK: b.top_k } : {}),
      ...(b.seed != null ? { seed: b.seed } : {}),
      ...(b.presence_penalty != null ? { presencePenalty: b.presence_penalty } : {}),
      ...(b.frequency_penalty != null ? { frequencyPenalty: b.frequency_penalty } : {}),
    };
    const passthrough = Object.fromEntries(Object.entries(body).filter(([k]) => !INTERPRETED.has(k)));
    const common = {
      requestId,
      protocol: "openai" as const,
      model: b.model,
      sampling: s,
      affinityKey: header(c.sessionHeader) || (b.user ?? ""),
      version: header(c.versionHeader),
      priority: "standard" as const,
      passthrough,
      signal,
      credential: bearerOf(header("authorization")),
    };
    const request: InferenceRequest = chat
      ? {
          ...common,
          messages: b.messages.map(
            (m): ChatTurn => ({
              role: m.role,
              content:
                typeof m.content === "string" ? m.content : (m.content ?? []).map((p) => p.text).join(""),
              ...(m.name ? { name: m.name } : {}),
            }),
          ),
        }
      : { ...common, prompt: typeof b.prompt === "string" ? b.prompt : (b.prompt[0] as string) };
    return { request, stream: b.stream ?? false, includeUsage: b.stream_options?.include_usage ?? false };
  }

  async function complete(req: HttpRequest, res: HttpResponse, chat: boolean): Promise<void> {
    const requestId = randomUUID();
    res.setHeader("x-request-id", requestId);
    const control = new AbortController();
    const deadline = setTimeout(
      () => control.abort(new ConnectError("the request took too long", Code.DeadlineExceeded)),
      config().limits.maxTimeoutMs,
    );
    res.on("close", () => {
      if (!res.writableFinished) control.abort(new ConnectError("the client went away", Code.Canceled));
    });
    let started = false;
    try {
      const text = await readBody(req, config().limits.maxRequestBytes);
      let body: unknown;
      try {
        body = JSON.parse(text);
      } catch {
        throw invalidRequest("the request body is not valid JSON");
      }
      if (body === null || typeof body !== "object" || Array.isArray(body)) {
        throw invalidRequest("the request body must be a JSON object");
      }
      const { request, stream, includeUsage } = toInferenceRequest(
        req,
        body as Record<string, unknown>,
        chat,
        requestId,
        control.signal,
      );
      const id = `${chat ? "chatcmpl" : "cmpl"}-${requestId}`;
      const base = {
        id,
        object: chat ? "chat.completion.chunk" : "text_completion",
        created: now(),
        model: request.model,
      };
      const chunk = (choice: Record<string, unknown>) =>
        `data: ${JSON.stringify({ ...base, choices: [{ index: 0, ...choice, logprobs: null }] })}\n\n`;
      // The chunk written for every token: its constant parts are built once per request.
      const head = `data: ${JSON.stringify(base).slice(0, -1)},"choices":[{"index":0,${chat ? '"delta":{"content":' : '"text":'}`;
      const tail = `${chat ? "}" : ""},"finish_reason":null,"logprobs":null}]}\n\n`;
      const tokenChunk = (text: string) => `${head}${JSON.stringify(text)}${tail}`;
      let collected = "";
      for await (const event of pipeline.run(request)) {
        if (!stream) {
          if (event.type === "start") res.setHeader("server-timing", serverTiming(event.timing));
          if (event.type === "delta") collected += event.text;
          if (event.type === "finish")
            sendJson(res, 200, completeBody(id, request.model, chat, collected, event));
          continue;
        }
        if (event.type === "start") {
          started = true;
          res.writeHead(200, {
            "content-type": "text/event-stream; charset=utf-8",
            "cache-control": "no-cache",
            "server-timing": serverTiming(event.timing),
          });
          if (chat)
            await write(res, chunk({ delta: { role: "assistant", content: "" }, finish_reason: null }));
        } else if (event.type === "delta") {
          await write(res, tokenChunk(event.text));
        } else {
          const reason = event.finishReason === "unspecified" ? null : event.finishReason;
          const stopReason = event.matchedStop === "" ? null : event.matchedStop;
          await write(
            res,
            chat
              ? chunk({ delta: {}, finish_reason: reason, stop_reason: stopReason })
              : chunk({ text: "", finish_reason: reason, stop_reason: stopReason }),
          );
          if (includeUsage) {
            await write(res, `data: ${JSON.stringify({ ...base, choices: [], usage: usageOf(event) })}\n\n`);
          }
          res.end("data: [DONE]\n\n");
        }
      }
    } catch (err) {
      if (err instanceof BodyTooLarge) {
        res.setHeader("connection", "close");
        return sendJson(res, 413, {
          error: {
            message: err.message,
            type: "invalid_request_error",
            param: null,
            code: "request_too_large",
          },
        });
      }
      const clientError = toClientError(err);
      if (res.writableEnded || control.signal.aborted) return;
      if (!started) return sendError(res, clientError);
      // The stream has begun: the error goes in-band, as OpenAI and vLLM do, then the stream ends.
      (res as http.ServerResponse).write(`data: ${JSON.stringify(openAiError(clientError).body)}\n\n`);
      res.end("data: [DONE]\n\n");
    } finally {
      clearTimeout(deadline);
    }
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
      if (route === "GET /v1/models") {
        let visible: (model: string) => boolean;
        try {
          const auth = req.headers.authorization;
          visible = pipeline.modelFilter(bearerOf(Array.isArray(auth) ? auth[0] : auth));
        } catch (err) {
          sendError(res, toClientError(err));
          return true;
        }
        sendJson(res, 200, {
          object: "list",
          data: table
            .models()
            .filter((m) => visible(m.name))
            .map((m) => ({ id: m.name, object: "model", created, owned_by: "kinfer" })),
        });
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

const now = () => Math.floor(Date.now() / 1000);

function usageOf(e: Extract<InferenceEvent, { type: "finish" }>) {
  return {
    prompt_tokens: e.usage.promptTokens,
    completion_tokens: e.usage.completionTokens,
    total_tokens: e.usage.promptTokens + e.usage.completionTokens,
    prompt_tokens_details: { cached_tokens: e.usage.cachedTokens },
  };
}

function completeBody(
  id: string,
  model: string,
  chat: boolean,
  text: string,
  e: Extract<InferenceEvent, { type: "finish" }>,
) {
  const finish_reason = e.finishReason === "unspecified" ? null : e.finishReason;
  const stop_reason = e.matchedStop === "" ? null : e.matchedStop;
  return {
    id,
    object: chat ? "chat.completion" : "text_completion",
    created: now(),
    model,
    choices: [
      chat
        ? {
            index: 0,
            message: { role: "assistant", content: text },
            logprobs: null,
            finish_reason,
            stop_reason,
          }
        : { index: 0, text, logprobs: null, finish_reason, stop_reason },
    ],
    usage: usageOf(e),
  };
}

/** Writes and waits for the socket to drain if its buffer is full (or for the client to leave). */
function write(res: HttpResponse, text: string): Promise<void> {
  if ((res as http.ServerResponse).write(text)) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      res.off("drain", done);
      res.off("close", done);
      resolve();
    };
    res.on("drain", done);
    res.on("close", done);
  });
}
