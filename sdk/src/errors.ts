/**
 * One error type for the SDK: KinferError, made from whatever a call threw (ConnectError.from), with the
 * gateway's ErrorDetail read out: the reason, whether retrying may help, and when.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { ErrorDetailSchema, ErrorReason } from "../../gen/es/kinfer/inference/v1/inference_pb.js";

const RETRYABLE_CODES = new Set([Code.Unavailable, Code.ResourceExhausted, Code.Aborted]);

export class KinferError extends Error {
  override readonly name = "KinferError";
  /** The status code, as Connect and gRPC define it. */
  readonly code: Code;
  /** The gateway's reason (ErrorReason.UNSPECIFIED when it sent none). */
  readonly reason: ErrorReason;
  /** How long the gateway asked to wait before retrying, in ms, if it did. */
  readonly retryAfterMs: number | undefined;
  /** Whether the same call may succeed if retried (overload, no healthy replica, rate limits). */
  readonly retryable: boolean;
  /** The underlying ConnectError. */
  override readonly cause: ConnectError;

  constructor(cause: ConnectError) {
    super(cause.rawMessage);
    this.cause = cause;
    this.code = cause.code;
    const detail = cause.findDetails(ErrorDetailSchema)[0];
    this.reason = detail?.reason ?? ErrorReason.UNSPECIFIED;
    this.retryAfterMs =
      detail?.retryAfter === undefined
        ? undefined
        : Number(detail.retryAfter.seconds) * 1000 + Math.round(detail.retryAfter.nanos / 1e6);
    this.retryable = RETRYABLE_CODES.has(cause.code) && this.reason !== ErrorReason.UPSTREAM_FAILED;
  }

  /** The code's name, e.g. "Unavailable". */
  get codeName(): string {
    return Code[this.code];
  }

  /** Normalises anything a call threw. */
  static from(err: unknown): KinferError {
    return err instanceof KinferError ? err : new KinferError(ConnectError.from(err));
  }
}
