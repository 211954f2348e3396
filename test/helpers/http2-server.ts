/**
 * Starts an h2c (HTTP/2 cleartext) server on 127.0.0.1:0 for a test and closes it completely afterwards,
 * sessions included, so that no test leaks sockets into the next one.
 */
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";

/** A running test server. */
export interface TestHttp2Server {
  /** The base URL, e.g. http://127.0.0.1:41234 */
  readonly baseUrl: string;
  /** host:port, for clients that take an authority (grpc-js). */
  readonly authority: string;
  /** Closes the listener and destroys open sessions. */
  close(): Promise<void>;
}

export async function startHttp2Server(
  handler: (req: http2.Http2ServerRequest, res: http2.Http2ServerResponse) => void,
): Promise<TestHttp2Server> {
  const server = http2.createServer(handler);
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on("session", (session) => {
    sessions.add(session);
    session.once("close", () => sessions.delete(session));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    baseUrl: `http://127.0.0.1:${port}`,
    authority: `127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        for (const session of sessions) session.destroy();
        server.close(() => resolve());
      }),
  };
}
