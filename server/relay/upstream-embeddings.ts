/**
 * One embeddings call to a replica: POST /v1/embeddings, answered as one JSON body. The vectors are asked
 * for in base64 (little-endian float32, about a third of the bytes of the same floats in JSON text and
 * no number parsing) and decoded into Float32Arrays. The answer is checked (one vector per input, in order,
 * all of one length) and bounded: its vectors may hold at most `maxVectorBytes` of float32s, and the body
 * is read only up to what such vectors take in base64 (plus JSON's framing). An answer cut there is the
 * request's doing (AnswerTooLarge, a "too-large" failure: not retried, not held against the replica) when
 * the first vector read shows that `inputs` vectors of its size pass the bound; otherwise the replica sent
 * more than it should, a "protocol" failure as any malformed answer. Other failures are UpstreamErrors classified as a streamed
 * request's are (a refused connection, 5xx, 429, a context too long), so the relay retries and accounts
 * for them the same way.
 */
import { type Dispatcher, request } from "undici";
import type { InferenceRequest } from "../request/inference-request.js";
import { classifyStatus, describeError, UpstreamError } from "./upstream-stream.js";

/** Largest error body read from a replica. */
const MAX_ERROR_BODY = 64 * 1024;
/** JSON framing per vector ({"object":"embedding","index":2047,"embedding":"..."},) and per answer, at most. */
const FRAMING_PER_VECTOR = 96;
const FRAMING_PER_ANSWER = 4096;

/** The largest body that can carry `inputs` vectors of at most `maxVectorBytes` float32 bytes in base64. */
export function answerBytesBound(inputs: number, maxVectorBytes: number): number {
  return Math.ceil(maxVectorBytes / 3) * 4 + inputs * (FRAMING_PER_VECTOR + 4) + FRAMING_PER_ANSWER;
}

/**
 * An answer whose vectors pass the bound: `inputs` vectors of `vectorSize` floats (which the relay learns),
 * or 0 when only a lower bound of the size was read.
 */
export class AnswerTooLarge extends UpstreamError {
  constructor(
    readonly vectorSize: number,
    detail: string,
  ) {
    super("too-large", detail);
  }
}

/** A body cut at its limit, with its first bytes (to tell a too-large answer from a broken one). */
class BodyOverLimit extends Error {
  constructor(
    readonly limit: number,
    readonly prefix: string,
  ) {
    super(`the answer is larger than ${limit} bytes`);
  }
}

/** How much of a cut answer is searched for its first vector. */
const PREFIX_BYTES = 1024 * 1024;

/**
 * The length of the first vector in (the start of) an embeddings answer, after "embedding": exact when its
 * base64 string or JSON array is complete in `text`, a lower bound when `text` ends inside it (a vector
 * longer than what was read); undefined when none has begun.
 */
export function firstVectorSize(
  text: string,
): { readonly size: number; readonly exact: boolean } | undefined {
  const b64 = /"embedding"\s*:\s*"([A-Za-z0-9+/]*)(={0,2})("?)/.exec(text);
  if (b64 !== null) {
    const [, chars = "", pad = "", quote] = b64;
    const exact = quote === '"';
    const bytes = exact
      ? ((chars.length + pad.length) / 4) * 3 - pad.length
      : Math.floor((chars.length * 3) / 4);
    const floats = exact ? bytes / 4 : Math.floor(bytes / 4);
    return Number.isInteger(floats) && floats > 0 ? { size: floats, exact } : undefined;
  }
  const array = /"embedding"\s*:\s*\[([^\]]*)(\]?)/.exec(text);
  if (array === null) return undefined;
  const [, items = "", close] = array;
  const count = items.trim() === "" ? 0 : items.split(",").length;
  // An incomplete array's last number may be cut: count the complete ones.
  const size = close === "]" ? count : Math.max(0, count - 1);
  return size > 0 ? { size, exact: close === "]" } : undefined;
}

/** The replica's answer, decoded. */
export interface UpstreamEmbeddings {
  readonly vectors: Float32Array[];
  readonly promptTokens: number;
}

/** The JSON body sent to the replica for an embedding request. */
export function embeddingsBody(req: InferenceRequest, servedModelName: string): string {
  const e = req.embed;
  if (e === undefined) throw new Error("not an embedding request");
  return JSON.stringify({
    ...req.passthrough,
    model: servedModelName,
    input: e.inputs,
    encoding_format: "base64",
    ...(e.dimensions !== undefined ? { dimensions: e.dimensions } : {}),
  });
}

export async function fetchEmbeddings(
  url: string,
  body: string,
  inputs: number,
  requestId: string,
  signal: AbortSignal,
  dispatcher: Dispatcher,
  maxVectorBytes: number,
  traceHeaders?: Readonly<Record<string, string>>,
): Promise<UpstreamEmbeddings> {
  let res: Dispatcher.ResponseData;
  try {
    res = await request(`${url}/v1/embeddings`, {
      method: "POST",
      body,
      headers: { "content-type": "application/json", "x-request-id": requestId, ...traceHeaders },
      signal,
      dispatcher,
    });
  } catch (err) {
    if (signal.aborted) throw signal.reason;
    throw new UpstreamError("connect", describeError(err));
  }
  let text: string;
  try {
    text = await readBounded(
      res.body,
      res.statusCode === 200 ? answerBytesBound(inputs, maxVectorBytes) : MAX_ERROR_BODY,
    );
  } catch (err) {
    if (signal.aborted) throw signal.reason;
    if (!(err instanceof BodyOverLimit)) throw new UpstreamError("broken-stream", describeError(err));
    const first = res.statusCode === 200 ? firstVectorSize(err.prefix) : undefined;
    if (first !== undefined && inputs * first.size * 4 > maxVectorBytes)
      throw new AnswerTooLarge(
        first.exact ? first.size : 0,
        `${inputs} vectors of ${first.exact ? "" : "at least "}${first.size} floats, more than ${maxVectorBytes} bytes`,
      );
    throw new UpstreamError("protocol", err.message);
  }
  if (res.statusCode !== 200) {
    const retryAfter = Number(res.headers["retry-after"]);
    throw new UpstreamError(
      classifyStatus(res.statusCode, text),
      `HTTP ${res.statusCode}: ${text.slice(0, 300)}`,
      Number.isFinite(retryAfter) && retryAfter > 0 ? retryAfter * 1000 : undefined,
    );
  }
  const answer = decode(text, inputs);
  const vectorBytes = answer.vectors.reduce((n, v) => n + v.byteLength, 0);
  if (vectorBytes > maxVectorBytes)
    throw new AnswerTooLarge(
      answer.vectors[0]?.length ?? 0,
      `${vectorBytes} bytes of vectors, more than ${maxVectorBytes}`,
    );
  return answer;
}

/** The body as text, or a BodyOverLimit (with its first bytes) once it passes `limit` bytes. */
async function readBounded(body: Dispatcher.ResponseData["body"], limit: number): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body) {
    size += (chunk as Buffer).length;
    chunks.push(chunk as Buffer);
    if (size > limit) {
      body.destroy();
      throw new BodyOverLimit(limit, Buffer.concat(chunks, Math.min(size, PREFIX_BYTES)).toString("utf8"));
    }
  }
  return Buffer.concat(chunks).toString("utf8");
}

/** Checks and decodes vLLM's answer; UpstreamError("protocol") for anything but the expected shape. */
function decode(text: string, inputs: number): UpstreamEmbeddings {
  const bad = (why: string) => new UpstreamError("protocol", `embeddings answer: ${why}`);
  let json: { data?: unknown; usage?: { prompt_tokens?: unknown } };
  try {
    json = JSON.parse(text) as typeof json;
  } catch {
    throw bad("not JSON");
  }
  if (!Array.isArray(json.data) || json.data.length !== inputs) throw bad(`not ${inputs} vectors`);
  const vectors: Float32Array[] = new Array(inputs);
  for (const item of json.data as { index?: unknown; embedding?: unknown }[]) {
    const index = item?.index;
    if (typeof index !== "number" || !Number.isInteger(index) || index < 0 || index >= inputs)
      throw bad("an index out of range");
    if (vectors[index] !== undefined) throw bad("an index twice");
    vectors[index] = toVector(item.embedding, bad);
  }
  const size = vectors[0]?.length ?? 0;
  if (size === 0 || vectors.some((v) => v.length !== size)) throw bad("vectors of different lengths");
  const promptTokens = json.usage?.prompt_tokens;
  if (typeof promptTokens !== "number" || !Number.isInteger(promptTokens) || promptTokens < 0)
    throw bad("no usage.prompt_tokens");
  return { vectors, promptTokens };
}

function toVector(embedding: unknown, bad: (why: string) => UpstreamError): Float32Array {
  if (typeof embedding === "string") {
    const bytes = Buffer.from(embedding, "base64");
    if (bytes.length % 4 !== 0) throw bad("a base64 vector that is not float32");
    const v = new Float32Array(bytes.length / 4);
    for (let i = 0; i < v.length; i++) v[i] = bytes.readFloatLE(i * 4);
    return v;
  }
  // A replica that ignores encoding_format and answers floats.
  if (Array.isArray(embedding) && embedding.every((x) => typeof x === "number"))
    return Float32Array.from(embedding);
  throw bad("a vector that is neither base64 nor numbers");
}
