/**
 * Errors on the OpenAI surface: the gateway's ConnectErrors (server/errors/gateway-error.ts) rendered in
 * OpenAI's shape, `{"error":{"message","type","param","code"}}`, with the HTTP status of the code and a
 * retry-after header when the error carries one. Before a stream begins an error is the whole answer;
 * after, it goes in-band as one SSE event followed by [DONE], as OpenAI and vLLM do.
 */
import { Code, type ConnectError } from "@connectrpc/connect";
import { ErrorDetailSchema, ErrorReason } from "../../../gen/es/kinfer/inference/v1/inference_pb.js";
import { type HttpResponse, sendJson } from "./openai-response.js";

/** The HTTP status of a Connect code, for the OpenAI-compatible surface. */
export function httpStatusOf(code: Code): number {
  switch (code) {
    case Code.InvalidArgument:
    case Code.OutOfRange:
    case Code.FailedPrecondition:
      return 400;
    case Code.Unauthenticated:
      return 401;
    case Code.PermissionDenied:
      return 403;
    case Code.NotFound:
      return 404;
    case Code.ResourceExhausted:
      return 429;
    case Code.Canceled:
      return 499;
    case Code.Unimplemented:
      return 501;
    case Code.Unavailable:
      return 503;
    case Code.DeadlineExceeded:
      return 504;
    default:
      return 500;
  }
}

const OPENAI_TYPES: Partial<Record<Code, string>> = {
  [Code.InvalidArgument]: "invalid_request_error",
  [Code.NotFound]: "invalid_request_error",
  [Code.Unauthenticated]: "authentication_error",
  [Code.PermissionDenied]: "permission_error",
  [Code.ResourceExhausted]: "rate_limit_error",
};

/** The OpenAI error body and HTTP status for an error. */
export function openAiError(err: ConnectError): {
  status: number;
  body: unknown;
  retryAfterSeconds?: number;
} {
  const retryAfter = err.findDetails(ErrorDetailSchema)[0]?.retryAfter;
  const status = httpStatusOf(err.code);
  return {
    status,
    body: {
      error: {
        message: err.rawMessage,
        type: OPENAI_TYPES[err.code] ?? "server_error",
        param: null,
        code: ErrorReason[
          err.findDetails(ErrorDetailSchema)[0]?.reason ?? ErrorReason.UNSPECIFIED
        ].toLowerCase(),
      },
    },
    ...(retryAfter !== undefined
      ? { retryAfterSeconds: Math.max(1, Math.ceil(Number(retryAfter.seconds) + retryAfter.nanos / 1e9)) }
      : {}),
  };
}

/** Answers with the error as the whole response. */
export function sendError(res: HttpResponse, err: ConnectError): void {
  const { status, body, retryAfterSeconds } = openAiError(err);
  sendJson(
    res,
    status,
    body,
    retryAfterSeconds !== undefined ? { "retry-after": String(retryAfterSeconds) } : {},
  );
}

/** Answers 413 and closes the connection (the rest of the body is not read). */
export function sendBodyTooLarge(res: HttpResponse, message: string): void {
  res.setHeader("connection", "close");
  sendJson(res, 413, {
    error: { message, type: "invalid_request_error", param: null, code: "request_too_large" },
  });
}

/** Answers 408 and closes the connection: the body did not arrive in time. */
export function sendBodyTimeout(res: HttpResponse, message: string): void {
  res.setHeader("connection", "close");
  sendJson(res, 408, {
    error: { message, type: "invalid_request_error", param: null, code: "request_timeout" },
  });
}

/** The in-band error event that ends a stream that has begun. */
export function errorEvent(err: ConnectError): string {
  return `data: ${JSON.stringify(openAiError(err).body)}\n\n`;
}
