/** JSON answers of the simulator, with vLLM's error shape. */
import type * as http from "node:http";
import type { VllmError } from "./vllm-error.js";

export function sendJson(res: http.ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
  res.end(text);
}

/** Answers with the error; `close` also closes the connection (after a body that was not read). */
export function sendError(res: http.ServerResponse, err: VllmError, close = false): void {
  if (close) res.setHeader("connection", "close");
  sendJson(res, err.status, err.toJson());
}
