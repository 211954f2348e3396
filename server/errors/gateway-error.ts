/**
 * The gateway's errors, mapped in this one place: every failure becomes a ConnectError with a Code and an
 * ErrorDetail (reason, retry-after); the OpenAI surface renders the same error in OpenAI's shape
 * (protocols/openai/openai-errors.ts). Messages are written here, for clients: upstream exception text, URLs and stack
 * traces never leave the gateway (they go to the logs).
 */
import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { ErrorDetailSchema, ErrorReason } from "../../gen/es/kinfer/inference/v1/inference_pb.js";

/** Creates a client-facing error with its detail attached. */
export function gatewayError(
  code: Code,
  reason: ErrorReason,
  message: string,
  retryAfterMs?: number,
): ConnectError {
  const detail = create(ErrorDetailSchema, {
    reason,
    ...(retryAfterMs !== undefined ? { retryAfter: durationFromMs(retryAfterMs) } : {}),
  });
  return new ConnectError(message, code, undefined, [{ desc: ErrorDetailSchema, value: detail }]);
}

export const invalidRequest = (message: string) =>
  gatewayError(Code.InvalidArgument, ErrorReason.INVALID_REQUEST, message);

export const modelNotFound = (model: string) =>
  gatewayError(Code.NotFound, ErrorReason.MODEL_NOT_FOUND, `model "${model}" is not served here`);

export const noHealthyReplica = (model: string) =>
  gatewayError(
    Code.Unavailable,
    ErrorReason.NO_HEALTHY_REPLICA,
    `no replica of model "${model}" is available`,
  );

/** An embeddings answer larger than limits.maxEmbeddingBytes or the client's surface carries. */
export const embeddingsTooLarge = () =>
  invalidRequest(
    "the embeddings answer would be larger than this gateway sends: send fewer inputs or ask for fewer dimensions",
  );

/** The reason a relay attempt failed, as the relay classifies it. */
export type UpstreamFailure =
  | "connect" // could not connect, or the connection was reset before a response
  | "overloaded" // 429
  | "unavailable" // 503, or another 5xx
  | "not-found" // 404: the replica does not serve the model (or LoRA adapter) named
  | "context-length" // 400 because the prompt is too long
  | "rejected" // another 4xx
  | "first-token-timeout"
  | "inter-token-timeout"
  | "broken-stream" // reset, in-band error event, or an end without finish/[DONE] after the first token
  | "protocol" // the replica answered something that is not vLLM's format
  | "too-large"; // an answer larger than the client may receive (the request's doing, not the replica's)

/** Maps a failure that ends a request to what the client sees. */
export function upstreamError(failure: UpstreamFailure, retryAfterMs?: number): ConnectError {
  switch (failure) {
    case "context-length":
      return gatewayError(
        Code.InvalidArgument,
        ErrorReason.CONTEXT_LENGTH_EXCEEDED,
        "the prompt plus max_tokens exceeds the model's context length",
      );
    case "rejected":
      return gatewayError(
        Code.InvalidArgument,
        ErrorReason.INVALID_REQUEST,
        "the model server rejected the request",
      );
    case "overloaded":
      return gatewayError(
        Code.ResourceExhausted,
        ErrorReason.OVERLOADED,
        "the model is overloaded",
        retryAfterMs ?? 1000,
      );
    case "first-token-timeout":
    case "inter-token-timeout":
      return gatewayError(
        Code.Unavailable,
        ErrorReason.UPSTREAM_TIMEOUT,
        "the model server stopped responding",
      );
    case "broken-stream":
    case "protocol":
      return gatewayError(
        Code.Unavailable,
        ErrorReason.UPSTREAM_FAILED,
        "the model server failed during generation",
      );
    case "too-large":
      return embeddingsTooLarge();
    case "not-found":
      return gatewayError(
        Code.NotFound,
        ErrorReason.MODEL_NOT_FOUND,
        "no replica serves the model or adapter named",
      );
    case "connect":
    case "unavailable":
      return gatewayError(
        Code.Unavailable,
        ErrorReason.NO_HEALTHY_REPLICA,
        "no replica could serve the request",
      );
  }
}

/**
 * Normalises anything thrown to a client-safe ConnectError. ConnectErrors made by the gateway pass as they
 * are; anything else (a bug, an unexpected library error) becomes INTERNAL with a fixed message.
 */
export function toClientError(err: unknown): ConnectError {
  if (err instanceof ConnectError) return err;
  return new ConnectError("internal error", Code.Internal);
}
