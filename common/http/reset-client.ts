/**
 * Cuts a client off mid-response, so that it knows at once: HTTP/2 gets RST_STREAM CANCEL for that stream
 * only (the connection's other streams go on), HTTP/1.1 loses its connection (it has no other way to
 * end a response early). `destroy()` alone is not enough on HTTP/2: with data still queued behind a
 * closed flow-control window it waits to flush before closing, which a client that stopped reading
 * never allows.
 */
import type * as http from "node:http";
import * as http2 from "node:http2";

export function resetClient(
  message: http.IncomingMessage | http2.Http2ServerRequest | http.ServerResponse | http2.Http2ServerResponse,
): void {
  if ("stream" in message) {
    if (!message.stream.destroyed) message.stream.close(http2.constants.NGHTTP2_CANCEL);
    return;
  }
  message.socket?.destroy();
}
