/**
 * CORS for browser clients of the public port: Connect and gRPC-Web over fetch from pages on other
 * origins. Only configured origins get CORS headers; preflights (OPTIONS) are answered here with the
 * methods and headers that connect-es lists (@connectrpc/connect's \`cors\`) plus kinfer's own, and actual
 * responses expose the headers and trailers Connect and gRPC-Web need, and x-request-id.
 */
import type * as http from "node:http";
import type * as http2 from "node:http2";
import { cors } from "@connectrpc/connect";

type Req = http.IncomingMessage | http2.Http2ServerRequest;
type Res = http.ServerResponse | http2.Http2ServerResponse;

export interface CorsOptions {
  readonly allowedOrigins: readonly string[];
  readonly maxAgeSeconds: number;
  /** Request headers of kinfer's own that browsers may send (session, version pin). */
  readonly extraHeaders: readonly string[];
}

/** Returns true when it answered the request (a preflight); otherwise adds headers and returns false. */
export function createCorsHandler(options: CorsOptions): (req: Req, res: Res) => boolean {
  const any = options.allowedOrigins.includes("*");
  const allowed = new Set(options.allowedOrigins);
  const allowHeaders = [...cors.allowedHeaders, "Authorization", ...options.extraHeaders].join(", ");
  const exposeHeaders = [...cors.exposedHeaders, "X-Request-Id"].join(", ");
  const allowMethods = cors.allowedMethods.join(", ");
  return (req, res) => {
    const origin = req.headers.origin;
    if (typeof origin !== "string" || (!any && !allowed.has(origin))) {
      if (req.method === "OPTIONS" && typeof origin === "string") {
        res.writeHead(403);
        res.end();
        return true;
      }
      return false;
    }
    res.setHeader("access-control-allow-origin", any ? "*" : origin);
    res.setHeader("vary", "Origin");
    if (req.method === "OPTIONS") {
      res.writeHead(204, {
        "access-control-allow-methods": allowMethods,
        "access-control-allow-headers": allowHeaders,
        "access-control-max-age": String(options.maxAgeSeconds),
      });
      res.end();
      return true;
    }
    res.setHeader("access-control-expose-headers", exposeHeaders);
    return false;
  };
}
