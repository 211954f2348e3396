/**
 * The operational routes every kinfer server answers on its port: GET /metrics (Prometheus text from a
 * prom-client registry), GET /healthz (liveness: the process serves) and, when the server has a notion of
 * readiness, GET /readyz (200 while ready, 503 otherwise, e.g. while draining).
 */
import type * as http from "node:http";
import type * as http2 from "node:http2";
import type { Registry } from "prom-client";

type Req = http.IncomingMessage | http2.Http2ServerRequest;
type Res = http.ServerResponse | http2.Http2ServerResponse;

export interface OpsRoutesOptions {
  readonly registry: Registry;
  /** Readiness for /readyz; without it, /readyz is not served. */
  readonly ready?: () => boolean;
}

/** Returns a handler that answers the ops routes and returns false for any other request. */
export function createOpsRoutes(options: OpsRoutesOptions): (req: Req, res: Res) => boolean {
  const { registry, ready } = options;
  const text = (res: Res, status: number, body: string) => {
    res.writeHead(status, { "content-type": "text/plain" });
    res.end(body);
  };
  return (req, res) => {
    if (req.method !== "GET") return false;
    const path = (req.url ?? "").split("?")[0];
    switch (path) {
      case "/metrics":
        registry.metrics().then(
          (body) => {
            res.writeHead(200, { "content-type": registry.contentType });
            res.end(body);
          },
          () => text(res, 500, "metrics unavailable\n"),
        );
        return true;
      case "/healthz":
        text(res, 200, "ok\n");
        return true;
      case "/readyz":
        if (ready === undefined) return false;
        if (ready()) text(res, 200, "ready\n");
        else text(res, 503, "not ready\n");
        return true;
      default:
        return false;
    }
  };
}
