/**
 * Reads an HTTP request body (HTTP/1.1 or HTTP/2) into a string, with a size bound. Used by the plain-HTTP
 * routes that parse JSON themselves: the gateway's OpenAI surface, the kube-scheduler extender and the
 * simulator.
 */
import type * as http from "node:http";
import type * as http2 from "node:http2";

/** A body over the limit: callers answer 413 and close the connection, as any HTTP server would. */
export class BodyTooLarge extends Error {
  override readonly name = "BodyTooLarge";
  constructor(readonly limit: number) {
    super(`the request body exceeds ${limit} bytes`);
  }
}

/** The client went away before the whole body arrived. */
export class BodyAborted extends Error {
  override readonly name = "BodyAborted";
  constructor() {
    super("the client went away while sending the request body");
  }
}

/**
 * Resolves with the UTF-8 body; rejects with BodyTooLarge once more than `limit` bytes arrive (the rest
 * is drained, not buffered) or with BodyAborted if the client goes away mid-body.
 */
export function readBody(
  req: http.IncomingMessage | http2.Http2ServerRequest,
  limit: number,
): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        req.off("data", onData);
        req.resume();
        reject(new BodyTooLarge(limit));
        return;
      }
      chunks.push(chunk);
    };
    req.on("data", onData);
    req.once("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    req.once("error", () => reject(new BodyAborted()));
  });
}
