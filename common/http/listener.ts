/**
 * One port for every protocol. Cleartext: Node's http2 server speaks only HTTP/2 (its allowHTTP1 exists
 * only with TLS), so each accepted socket's first bytes are read: the HTTP/2 connection preface
 * ("PRI * HTTP/2.0") hands it to an http2 server (gRPC and Connect over h2c), anything else to an HTTP/1.1
 * server (curl, Prometheus, kubelet probes, browsers, the openai client, gRPC-Web). TLS: one http2 secure
 * server with ALPN h2 and http/1.1 does both. Both paths share one request handler.
 */
import { readFileSync } from "node:fs";
import * as http from "node:http";
import * as http2 from "node:http2";
import * as net from "node:net";

export type RequestHandler = (
  req: http.IncomingMessage | http2.Http2ServerRequest,
  res: http.ServerResponse | http2.Http2ServerResponse,
) => void;

export interface ListenerOptions {
  host: string;
  port: number;
  /** TLS; with `clientCaFile`, clients must present a certificate signed by that CA (mutual TLS). */
  tls?: { certFile: string; keyFile: string; clientCaFile?: string | undefined } | undefined;
  /** HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS per connection. */
  maxConcurrentStreams: number;
}

export interface Listener {
  readonly port: number;
  readonly url: string;
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
  const settings = { maxConcurrentStreams: options.maxConcurrentStreams };
  const sessions = new Set<http2.Http2Session>();
  const sockets = new Set<net.Socket>();
  const trackSession = (s: http2.Http2Session) => {
    sessions.add(s);
    s.once("close", () => sessions.delete(s));
  };

  let outer: net.Server;
  let secure: http2.Http2SecureServer | undefined;
  let h1: http.Server | undefined;
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
        settings,
      },
      handler,
    );
    secure.on("session", trackSession);
    outer = secure;
  } else {
    const h2 = http2.createServer({ settings }, handler);
    h2.on("session", trackSession);
    h1 = http.createServer(handler);
    h1.keepAliveTimeout = 65_000; // above common load-balancer idle timeouts
    const plain = { h1, h2 };
    // Sockets accepted here never pass through the http servers' own accept path, so set what they would:
    // no Nagle delay (tokens are small writes that must leave at once) and TCP keep-alive.
    outer = net.createServer({ noDelay: true, keepAlive: true }, (socket) => route(socket, plain));
  }
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

/** Reads enough of a new cleartext socket to tell HTTP/2 from HTTP/1.1, puts it back, hands it over. */
function route(socket: net.Socket, servers: { h1: http.Server; h2: http2.Http2Server }): void {
  let head = Buffer.alloc(0);
  const onData = (chunk: Buffer) => {
    head = Buffer.concat([head, chunk]);
    const n = Math.min(head.length, PREFACE.length);
    const isH2 = head.subarray(0, n).equals(PREFACE.subarray(0, n));
    if (isH2 && head.length < PREFACE.length) return; // could still be either: wait for more
    socket.off("data", onData);
    socket.off("error", onError);
    socket.setTimeout(0);
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
  socket.setTimeout(30_000, () => {
    if (head.length === 0) socket.destroy(); // a connection that never speaks
  });
}
