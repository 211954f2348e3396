/**
 * The kube-scheduler extender over HTTP: POST {prefix}/filter, /prioritize, /bind and /preempt with the
 * extender's JSON, parsed and written through the scheduling proto (extender-json.ts). Malformed requests
 * get HTTP 400 with a message (kube-scheduler logs it) and leave the process unharmed.
 */
import type * as http from "node:http";
import type * as http2 from "node:http2";
import { ConnectError } from "@connectrpc/connect";
import { BodyAborted, BodyTimeout, BodyTooLarge, readBody } from "../../common/http/read-body.js";
import {
  BindRequestSchema,
  BindResponseSchema,
  FilterRequestSchema,
  FilterResponseSchema,
  PreemptRequestSchema,
  PreemptResponseSchema,
  PrioritizeRequestSchema,
} from "../../gen/es/kinfer/scheduling/v1/scheduling_pb.js";
import { filterReplyText, parseExtenderJson, prioritizeReplyText, toExtenderJson } from "./extender-json.js";
import type { SchedulingService } from "./scheduling-service.js";

type Req = http.IncomingMessage | http2.Http2ServerRequest;
type Res = http.ServerResponse | http2.Http2ServerResponse;

/** JSON text that is already serialised. */
class RawJson {
  constructor(readonly text: string) {}
}

function send(res: Res, status: number, body: unknown) {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(body instanceof RawJson ? body.text : JSON.stringify(body));
}

export interface HttpExtenderOptions {
  /** URL prefix of the verbs, e.g. "/scheduler". */
  readonly prefix: string;
  /** Largest body accepted; larger ones get 413. */
  readonly maxBodyBytes: number;
  /** Time a body has to arrive; then 408. */
  readonly bodyTimeoutMs: number;
}

/** Returns a handler for the extender's paths; it returns false for other paths. */
export function createHttpExtender(service: SchedulingService, options: HttpExtenderOptions) {
  const prefix = options.prefix;
  return (req: Req, res: Res): boolean => {
    const path = (req.url ?? "").split("?")[0] ?? "";
    if (req.method !== "POST" || !path.startsWith(`${prefix}/`)) return false;
    const verb = path.slice(prefix.length + 1);
    if (!["filter", "prioritize", "bind", "preempt"].includes(verb)) return false;
    readBody(req, options.maxBodyBytes, options.bodyTimeoutMs)
      .then(async (body) => {
        switch (verb) {
          case "filter": {
            const reply = service.filter(parseExtenderJson(FilterRequestSchema, body));
            // nodeCacheCapable (no Nodes in the reply): written directly, as for prioritize.
            return reply.nodes === undefined
              ? new RawJson(filterReplyText(reply))
              : toExtenderJson(FilterResponseSchema, reply);
          }
          case "prioritize":
            return new RawJson(
              prioritizeReplyText(
                service.prioritize(parseExtenderJson(PrioritizeRequestSchema, body)).hostPriorities ?? [],
              ),
            );
          case "bind":
            return toExtenderJson(
              BindResponseSchema,
              await service.bind(parseExtenderJson(BindRequestSchema, body)),
            );
          default:
            return toExtenderJson(
              PreemptResponseSchema,
              service.preempt(parseExtenderJson(PreemptRequestSchema, body)),
            );
        }
      })
      .then(
        (json) => send(res, 200, json),
        (err: unknown) => {
          if (err instanceof BodyTooLarge || err instanceof BodyTimeout) {
            res.setHeader("connection", "close");
            return send(res, err instanceof BodyTooLarge ? 413 : 408, { Error: err.message });
          }
          if (err instanceof BodyAborted) return;
          const message = err instanceof ConnectError ? err.rawMessage : "internal error";
          send(res, err instanceof ConnectError ? 400 : 500, { Error: message });
        },
      );
    return true;
  };
}
