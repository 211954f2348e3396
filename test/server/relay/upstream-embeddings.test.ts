/**
 * Reading the size of an embeddings answer's first vector from the answer's first bytes (the relay tells
 * an answer too large for its bound, the request's doing, from a replica that sends too much).
 */
import { expect, it } from "vitest";
import { answerBytesBound, firstVectorSize } from "../../../server/relay/upstream-embeddings.js";

const b64 = (floats: number) => Buffer.alloc(floats * 4, 7).toString("base64");

it("reads the first vector's length, exactly when it is complete and as a lower bound when it is cut", () => {
  for (const n of [1, 2, 3, 128, 4096]) {
    const text = `{"object":"list","data":[{"object":"embedding","index":0,"embedding":"${b64(n)}"},{"index":1`;
    expect(firstVectorSize(text)).toEqual({ size: n, exact: true });
  }
  const whole = b64(4096);
  const cut = `{"data":[{"embedding":"${whole.slice(0, 1000)}`;
  const partial = firstVectorSize(cut);
  expect(partial?.exact).toBe(false);
  expect(partial?.size).toBeLessThanOrEqual(4096);
  expect(partial?.size).toBe(Math.floor(Math.floor((1000 * 3) / 4) / 4));
  // A replica that ignored encoding_format and sent floats.
  expect(firstVectorSize('{"data":[{"embedding":[0.1, -0.2, 3e-5],"index":0}]')).toEqual({
    size: 3,
    exact: true,
  });
  expect(firstVectorSize('{"data":[{"embedding":[0.1,-0.2,0.3')).toEqual({ size: 2, exact: false });
  // Nothing to go by: no vector has begun, or base64 that is not float32.
  expect(firstVectorSize('{"data":[{"object":"embedding","ind')).toBeUndefined();
  expect(firstVectorSize('{"data":[{"embedding":"AAA="}]}')).toBeUndefined();
  expect(firstVectorSize('{"data":[{"embedding":[]}]}')).toBeUndefined();
});

it("bounds the body by what the vectors take in base64, plus framing", () => {
  const vectors = 2 * 128 * 4;
  const body = JSON.stringify({
    object: "list",
    data: [0, 1].map((index) => ({ object: "embedding", index, embedding: b64(128) })),
    usage: { prompt_tokens: 9, total_tokens: 9 },
  });
  expect(body.length).toBeLessThanOrEqual(answerBytesBound(2, vectors));
  expect(answerBytesBound(2, vectors)).toBeLessThan(body.length + 8192);
});
