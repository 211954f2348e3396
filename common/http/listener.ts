/**
 * One port for every protocol. Cleartext: Node's http2 server speaks only HTTP/2 (its allowHTTP1 exists
 * only with TLS), so each accepted socket's first bytes are read: the HTTP/2 connection preface
 * ("PRI * HTTP/2.0") hands it to an http2 server (gRPC and Connect over h2c), anything else to an HTTP/1.1
 * server (curl, Prometheus, kubelet probes, browsers, the openai client, gRPC-Web). TLS: one http2 secure
 * server with ALPN h2 and http/1.1 does both. Both paths share one request handler.
 *
 * Every connection is bounded, so that a careless or hostile client cannot hold the process's sockets
 * (ConnectionLimits): a connection must send its first request head (or the HTTP/2 preface) within
 * headersTimeoutMs; a request must deliver its whole body within bodyTimeoutMs; a keep-alive connection or
 * an HTTP/2 session with no request open is closed after idleTimeoutMs; there are at most maxConnections
 * connections, and request heads (HTTP/2 header lists included) of at most maxHeaderBytes.
 */
import { readFileSync } from "node:fs";
import * as http from "node:http";
import * as http2 from "node:http2";
import * as net from "node:net";
import { resetClient } from "./reset-client.js";

export type RequestHandler = (
  req: http.IncomingMessage | http2.Http2ServerRequest,
  res: http.ServerResponse | http2.Http2ServerResponse,
) => void;

/** Bounds on what one connection may hold. */
export interface ConnectionLimits {
  /** Time to send a complete request head (HTTP/1.1), or the HTTP/2 preface and first request. */
  readonly headersTimeoutMs: number;
  /** Time a request has to send its whole body, after its head. */
  readonly bodyTimeoutMs: number;
  /** An HTTP/1.1 keep-alive connection or an HTTP/2 session with no request open closes after this. */
  readonly idleTimeoutMs: number;
  /** Open connections at once; further ones are refused. */
  readonly maxConnections: number;
  /** Largest request head: HTTP/1.1 headers, or an HTTP/2 header list (SETTINGS_MAX_HEADER_LIST_SIZE). */
  readonly maxHeaderBytes: number;
}

/** The defaults of the gateway's config (server/config/gateway-config.ts documents each). */
export const DEFAULT_CONNECTION_LIMITS: ConnectionLimits = {
  headersTimeoutMs: 10_000,
  bodyTimeoutMs: 30_000,
  idleTimeoutMs: 65_000,
  maxConnections: 10_000,
  maxHeaderBytes: 32 * 1024,
};

export interface ListenerOptions {
  host: string;
  port: number;
  /** TLS; with `clientCaFile`, clients must present a certificate signed by that CA (mutual TLS). */
  tls?: { certFile: string; keyFile: string; clientCaFile?: string | undefined } | undefined;
  /** HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS per connection. */
  maxConcurrentStreams: number;
  limits: ConnectionLimits;
}

export interface Listener {
  readonly port: number;
  readonly url: string;
  /** Connections open now. */
  readonly connections: number;
  /** Stops accepting connections; open ones stay until `closeAll`. */
  stopAccepting(): Promise<void>;
  /** Ends every connection now (HTTP/2 sessions get GOAWAY first). */
  closeAll(): void;
  /**
   * Ends connections gracefully: HTTP/2 sessions get GOAWAY and finish their open streams, idle HTTP/1.1
   * connections close; resolves when all are gone or after `timeoutMs`, whichever is first.
   */
  closeGracefully(timeoutMs: number): Promise<void>;
  /** Reloads the TLS certificate and key from their files (no-op without TLS). */
  reloadTls(): void;
}

const PREFACE = Buffer.from("PRI * HTTP/2.0");

export async function listen(options: ListenerOptions, handler: RequestHandler): Promise<Listener> {
  const limits = options.limits;
  const settings = {
    maxConcurrentStreams: options.maxConcurrentStreams,
    maxHeaderListSize: limits.maxHeaderBytes,
  };
  const sessions = new Set<http2.Http2Session>();
  const sockets = new Set<net.Socket>();
  const bounded: RequestHandler = (req, res) => {
    boundBody(req, res, limits.bodyTimeoutMs);
    handler(req, res);
  };

  let outer: net.Server;
  let secure: http2.Http2SecureServer | undefined;
  let h1: http.Server | undefined;
  const h2Options = { settings, maxSessionMemory: 32, maxHeaderListPairs: 256 };
  if (options.tls !== undefined) {
    const tls = options.tls;
    secure = http2.createSecureServer(
      {
        cert: readFileSync(tls.certFile),
        key: readFileSync(tls.keyFile),
        ...(tls.clientCaFile !== undefined
          ? { ca: readFileSync(tls.clientCaFile), requestCert: true, rejectUnauthorized: true }
          : {}),
        allowHTTP1: true,
        ...h2Options,
      },
      bounded,
    );
    secure.on("session", (s) => trackSession(s, sessions, limits));
    // HTTP/1.1 over TLS (ALPN http/1.1) has no head timeout of its own: an idle socket is closed after
    // idleTimeoutMs. (Deployments terminate TLS at the gateway rarely; the cleartext path is fully bounded.)
    secure.on("secureConnection", (socket: net.Socket) =>
      socket.setTimeout(limits.idleTimeoutMs, () => socket.destroy()),
    );
    outer = secure;
  } else {
    const h2 = http2.createServer(h2Options, bounded);
    h2.on("session", (s) => trackSession(s, sessions, limits));
    h1 = http.createServer(
      {
        headersTimeout: limits.headersTimeoutMs,
        requestTimeout: limits.headersTimeoutMs + limits.bodyTimeoutMs,
        keepAliveTimeout: limits.idleTimeoutMs,
        maxHeaderSize: limits.maxHeaderBytes,
        connectionsCheckingInterval: Math.min(1000, Math.max(100, limits.headersTimeoutMs / 4)),
      },
      bounded,
    );
    // The HTTP/1.1 server never listens itself (sockets are handed to it), and Node starts the checks
    // behind headersTimeout and requestTimeout when a server starts listening: start them here.
    h1.emit("listening");
    const plain = { h1, h2 };
    // Sockets accepted here never pass through the http servers' own accept path, so set what they would:
    // no Nagle delay (tokens are small writes that must leave at once) and TCP keep-alive.
    outer = net.createServer({ noDelay: true, keepAlive: true }, (socket) =>
      route(socket, plain, limits.headersTimeoutMs),
    );
  }
  outer.maxConnections = limits.maxConnections;
  outer.on("connection", (socket: net.Socket) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
  });

  await new Promise<void>((resolve, reject) => {
    outer.once("error", reject);
    outer.listen(options.port, options.host, () => {
      outer.off("error", reject);
      resolve();
    });
  });
  const port = (outer.address() as net.AddressInfo).port;
  const host = options.host.includes(":") ? `[${options.host}]` : options.host;

  return {
    port,
    url: `${options.tls ? "https" : "http"}://${host === "0.0.0.0" ? "127.0.0.1" : host}:${port}`,
    get connections() {
      return sockets.size;
    },
    stopAccepting: () => new Promise<void>((resolve) => outer.close(() => resolve())),
    closeAll() {
      for (const s of sessions) s.close();
      h1?.closeAllConnections();
      for (const s of sockets) s.destroy();
    },
    async closeGracefully(timeoutMs) {
      for (const s of sessions) s.close();
      h1?.closeIdleConnections();
      const until = Date.now() + timeoutMs;
      while (sockets.size > 0 && Date.now() < until) {
        h1?.closeIdleConnections();
        await new Promise((r) => setTimeout(r, 20));
      }
    },
    reloadTls() {
      if (secure === undefined || options.tls === undefined) return;
      secure.setSecureContext({
        cert: readFileSync(options.tls.certFile),
        key: readFileSync(options.tls.keyFile),
        ...(options.tls.clientCaFile !== undefined ? { ca: readFileSync(options.tls.clientCaFile) } : {}),
      });
    },
  };
}

/**
 * An HTTP/2 session is closed when it has had no stream open for idleTimeoutMs (one that sent its preface
 * and nothing else included), and when it has not opened its first stream within headersTimeoutMs.
 */
function trackSession(
  session: http2.Http2Session,
  sessions: Set<http2.Http2Session>,
  limits: ConnectionLimits,
) {
  sessions.add(session);
  let open = 0;
  let timer: NodeJS.Timeout | undefined;
  const arm = (ms: number) => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      if (open === 0 && !session.destroyed) session.close(); // GOAWAY, then the socket closes
      // A client that ignores GOAWAY is cut after one more period.
      timer = setTimeout(() => session.destroy(), ms);
      timer.unref();
    }, ms);
    timer.unref();
  };
  arm(Math.min(limits.headersTimeoutMs, limits.idleTimeoutMs));
  session.on("stream", (stream: http2.ServerHttp2Stream) => {
    open++;
    clearTimeout(timer);
    stream.once("close", () => {
      open--;
      if (open === 0 && !session.closed) arm(limits.idleTimeoutMs);
    });
  });
  session.once("close", () => {
    clearTimeout(timer);
    sessions.delete(session);
  });
}

/**
 * A request whose body has not ended bodyTimeoutMs after its head is cut (HTTP/2: RST_STREAM, HTTP/1.1:
 * the connection), so that a client trickling a body cannot hold a request, and its handler's resources,
 * open. Handlers that read the body themselves answer 408 first (read-body.ts, with the same bound).
 */
function boundBody(
  req: http.IncomingMessage | http2.Http2ServerRequest,
  res: http.ServerResponse | http2.Http2ServerResponse,
  bodyTimeoutMs: number,
): void {
  if (req.readableEnded || req.complete) return;
  const timer = setTimeout(() => {
    if (req.complete) return;
    // Give a handler that answers the timeout itself a moment, then cut.
    setTimeout(() => {
      if (!req.complete && !res.writableEnded) resetClient(req);
    }, 100).unref();
  }, bodyTimeoutMs);
  timer.unref();
  const done = () => clearTimeout(timer);
  req.once("end", done);
  req.once("close", done);
  res.once("close", done);
}

/**
 * Reads enough of a new cleartext socket to tell HTTP/2 from HTTP/1.1, puts it back, hands it over. A
 * socket that has not said which within `timeoutMs` (nothing, or a partial preface) is closed.
 */
function route(
  socket: net.Socket,
  servers: { h1: http.Server; h2: http2.Http2Server },
  timeoutMs: number,
): void {
  let head = Buffer.alloc(0);
  const onData = (chunk: Buffer) => {
    head = Buffer.concat([head, chunk]);
    const n = Math.min(head.length, PREFACE.length);
    const isH2 = head.subarray(0, n).equals(PREFACE.subarray(0, n));
    if (isH2 && head.length < PREFACE.length) return; // could still be either: wait for more
    socket.off("data", onData);
    socket.off("error", onError);
    clearTimeout(timer);
    socket.pause();
    socket.unshift(head);
    if (isH2) {
      // The HTTP/2 session takes the buffered bytes and then reads the native handle itself: resuming the
      // JS stream here would steal its input.
      servers.h2.emit("connection", socket);
    } else {
      servers.h1.emit("connection", socket);
      socket.resume();
    }
  };
  const onError = () => socket.destroy();
  socket.on("data", onData);
  socket.on("error", onError);
  const timer = setTimeout(() => socket.destroy(), timeoutMs);
  timer.unref();
  socket.once("close", () => clearTimeout(timer));
}
