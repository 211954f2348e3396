/**
 * One embeddings call to a replica: POST /v1/embeddings, answered as one JSON body. The vectors are asked
 * for in base64 (little-endian float32, about a third of the bytes of the same floats in JSON text and
 * no number parsing) and decoded into Float32Arrays. The answer is checked (one vector per input, in order,
 * all of one length) and bounded: its vectors may hold at most `maxVectorBytes` of float32s, and the body
 * is read only up to what such vectors take in base64 (plus JSON's framing), so a larger answer is cut
 * while it arrives, as UpstreamError("too-large"): the request asked for too much, which is not the
 * replica's fault and not worth a retry. Other failures are UpstreamErrors classified as a streamed
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
    text =
      res.statusCode === 200
        ? await readBounded(res.body, answerBytesBound(inputs, maxVectorBytes), "too-large")
        : await readBounded(res.body, MAX_ERROR_BODY, "protocol");
  } catch (err) {
    if (signal.aborted) throw signal.reason;
    if (err instanceof UpstreamError) throw err;
    throw new UpstreamError("broken-stream", describeError(err));
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
    throw new UpstreamError("too-large", `${vectorBytes} bytes of vectors, more than ${maxVectorBytes}`);
  return answer;
}

/** The body as text, or an UpstreamError(`failure`) once it passes `limit` bytes. */
async function readBounded(
  body: Dispatcher.ResponseData["body"],
  limit: number,
  failure: "too-large" | "protocol",
): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body) {
    size += (chunk as Buffer).length;
    if (size > limit) {
      body.destroy();
      throw new UpstreamError(failure, `the answer is larger than ${limit} bytes`);
    }
    chunks.push(chunk as Buffer);
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
