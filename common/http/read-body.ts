/**
 * Reads an HTTP request body (HTTP/1.1 or HTTP/2) into a string, bounded in size and in time. Used by the
 * plain-HTTP routes that parse JSON themselves: the gateway's OpenAI surface, the kube-scheduler extender
 * and the simulator. A body that is too large, too slow (slowloris on the body) or abandoned mid-way is
 * never buffered further: the caller answers 413 or 408, or drops the request.
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

/** The whole body did not arrive in time: callers answer 408 and close the connection. */
export class BodyTimeout extends Error {
  override readonly name = "BodyTimeout";
  constructor(readonly timeoutMs: number) {
    super(`the request body did not arrive within ${timeoutMs} ms`);
  }
}

/**
 * Resolves with the UTF-8 body; rejects with BodyTooLarge once more than `limit` bytes arrive (the rest
 * is drained, not buffered), with BodyTimeout if it has not all arrived after `timeoutMs` (no bound when
 * undefined), or with BodyAborted if the client goes away mid-body.
 */
export function readBody(
  req: http.IncomingMessage | http2.Http2ServerRequest,
  limit: number,
  timeoutMs?: number,
): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let settled = false;
    const settle = (fn: () => void) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      req.off("data", onData);
      fn();
    };
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        req.resume(); // drain the rest without keeping it
        settle(() => reject(new BodyTooLarge(limit)));
        return;
      }
      chunks.push(chunk);
    };
    const timer =
      timeoutMs === undefined
        ? undefined
        : setTimeout(() => {
            req.resume();
            settle(() => reject(new BodyTimeout(timeoutMs)));
          }, timeoutMs);
    req.on("data", onData);
    req.once("end", () => settle(() => resolve(Buffer.concat(chunks).toString("utf8"))));
    req.once("error", () => settle(() => reject(new BodyAborted())));
    // HTTP/2 resets and HTTP/1.1 disconnects before the end: the request closes without "end".
    req.once("aborted", () => settle(() => reject(new BodyAborted())));
    req.once("close", () => settle(() => reject(new BodyAborted())));
  });
}
