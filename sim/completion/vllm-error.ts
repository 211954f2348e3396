/**
 * vLLM's JSON error shape: `{"error":{"message","type","param","code"}}` with the HTTP status as `code`,
 * both for error responses and for the in-band error event of a stream that fails after it began.
 */

const TYPES: Record<number, string> = {
  400: "BadRequestError",
  404: "NotFoundError",
  413: "BadRequestError",
  429: "RateLimitError",
  500: "InternalServerError",
  503: "ServiceUnavailableError",
};

/** A failure to report to the client in vLLM's shape. */
export class VllmError extends Error {
  override readonly name = "VllmError";
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }

  /** The JSON body. */
  toJson(): { error: { message: string; type: string; param: null; code: number } } {
    return {
      error: {
        message: this.message,
        type: TYPES[this.status] ?? "InternalServerError",
        param: null,
        code: this.status,
      },
    };
  }
}
