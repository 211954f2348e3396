/**
 * The admitter's arithmetic on a virtual clock (admission.test.ts runs it through a real gateway): token
 * buckets that refill continuously and cap at a minute's worth, the retry-after a refused caller is told,
 * settlement that refunds or charges the difference between reservation and use, each admission ended
 * once, the tenant usage it reports, and the state of keys removed from the store.
 */

import { durationMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { ErrorDetailSchema, ErrorReason } from "../../../gen/es/kinfer/inference/v1/inference_pb.js";
import { bearerOf, createAdmitter, type TenantUsage } from "../../../server/tenants/admission.js";
import {
  type ApiKeyLimits,
  createKeyIndex,
  type KeyStore,
  newKey,
} from "../../../server/tenants/key-store.js";

function setup(limits: Partial<ApiKeyLimits>, allowedModels: string[] = []) {
  let t = 1_000_000;
  const index = createKeyIndex();
  const { record, secret } = newKey({ tenant: "acme", limits, allowedModels });
  index.set([record]);
  const store: KeyStore = {
    ...index,
    create: () => {
      throw new Error("not used");
    },
    revoke: () => {
      throw new Error("not used");
    },
    close() {},
  };
  const events: string[] = [];
  const usage: TenantUsage = {
    admitted: (tenant) => events.push(`admitted ${tenant}`),
    refused: (tenant, reason) => events.push(`refused ${tenant} ${reason}`),
    streams: (tenant, delta) => events.push(`streams ${tenant} ${delta}`),
    tokens: (tenant, n) => events.push(`tokens ${tenant} ${n}`),
  };
  const admitter = createAdmitter(store, usage, () => t);
  return {
    admitter,
    index,
    record,
    secret,
    events,
    advance: (ms: number) => {
      t += ms;
    },
  };
}

/** The error `fn` throws, with its code, message and retry-after (ms). */
function refusal(fn: () => unknown): {
  code: Code;
  message: string;
  reason: ErrorReason | undefined;
  retryAfterMs: number | undefined;
} {
  try {
    fn();
  } catch (err) {
    if (!(err instanceof ConnectError)) throw err;
    const detail = err.findDetails(ErrorDetailSchema)[0];
    return {
      code: err.code,
      message: err.rawMessage,
      reason: detail?.reason,
      retryAfterMs: detail?.retryAfter === undefined ? undefined : durationMs(detail.retryAfter),
    };
  }
  throw new Error("expected a refusal");
}

describe("requests per minute", () => {
  it("a minute's worth at once, then one more every 60/rpm seconds, never more than a minute's worth", () => {
    const s = setup({ requestsPerMinute: 6 }); // one every 10 s
    for (let i = 0; i < 6; i++) s.admitter.admit(s.record, "m", 1).end(1);
    expect(refusal(() => s.admitter.admit(s.record, "m", 1))).toEqual({
      code: Code.ResourceExhausted,
      message: "the API key's limit of 6 requests per minute is reached",
      reason: ErrorReason.RATE_LIMITED,
      retryAfterMs: 10_000,
    });
    s.advance(4_000);
    expect(refusal(() => s.admitter.admit(s.record, "m", 1)).retryAfterMs).toBe(6_000);
    s.advance(6_000);
    s.admitter.admit(s.record, "m", 1).end(1); // refilled one
    expect(refusal(() => s.admitter.admit(s.record, "m", 1)).retryAfterMs).toBe(10_000);
    // An hour idle refills a minute's worth, not sixty.
    s.advance(3_600_000);
    for (let i = 0; i < 6; i++) s.admitter.admit(s.record, "m", 1).end(1);
    expect(refusal(() => s.admitter.admit(s.record, "m", 1)).reason).toBe(ErrorReason.RATE_LIMITED);
  });
});

describe("tokens per minute", () => {
  it("a request larger than a minute's budget is refused for good (no retry-after); exactly the budget passes", () => {
    const s = setup({ tokensPerMinute: 600 });
    expect(refusal(() => s.admitter.admit(s.record, "m", 601))).toEqual({
      code: Code.ResourceExhausted,
      message: "the request may use 601 tokens, more than the API key's 600 per minute; lower max_tokens",
      reason: ErrorReason.TOKEN_BUDGET_EXHAUSTED,
      retryAfterMs: undefined,
    });
    s.admitter.admit(s.record, "m", 600);
  });

  it("reservations take from the bucket; a refusal says when the estimate will fit", () => {
    const s = setup({ tokensPerMinute: 600 }); // 10 tokens a second
    const a = s.admitter.admit(s.record, "m", 400);
    s.admitter.admit(s.record, "m", 200);
    expect(refusal(() => s.admitter.admit(s.record, "m", 50))).toEqual({
      code: Code.ResourceExhausted,
      message: "the API key's limit of 600 tokens per minute is reached",
      reason: ErrorReason.TOKEN_BUDGET_EXHAUSTED,
      retryAfterMs: 5_000,
    });
    s.advance(5_000);
    s.admitter.admit(s.record, "m", 50); // exactly refilled
    // Settlement: 400 reserved, 100 used: 300 come back at once.
    a.end(100);
    s.admitter.admit(s.record, "m", 300);
    expect(refusal(() => s.admitter.admit(s.record, "m", 1)).retryAfterMs).toBe(100);
  });

  it("use beyond the reservation is charged, and refunds never fill the bucket past a minute's worth", () => {
    const s = setup({ tokensPerMinute: 600 });
    const over = s.admitter.admit(s.record, "m", 100);
    over.end(400); // the estimate was low: 300 more charged
    expect(refusal(() => s.admitter.admit(s.record, "m", 201)).retryAfterMs).toBe(100);
    s.admitter.admit(s.record, "m", 200).end(200);
    s.advance(60_000); // full again
    const unused = s.admitter.admit(s.record, "m", 600);
    s.advance(60_000); // refilled while reserved: the refund must not overflow
    unused.end(0);
    s.admitter.admit(s.record, "m", 600);
    expect(refusal(() => s.admitter.admit(s.record, "m", 1)).reason).toBe(ErrorReason.TOKEN_BUDGET_EXHAUSTED);
  });
});

describe("streams, usage and ending", () => {
  it("counts streams per key and over all keys until each admission ends, once", () => {
    const s = setup({ maxConcurrentStreams: 2, tokensPerMinute: 1000 });
    const a = s.admitter.admit(s.record, "m", 100);
    const b = s.admitter.admit(s.record, "m", 50);
    expect(s.admitter.activity()).toEqual({ streams: 2, reservedTokens: 150 });
    expect(refusal(() => s.admitter.admit(s.record, "m", 1))).toEqual({
      code: Code.ResourceExhausted,
      message: "the API key has 2 streams open, its limit",
      reason: ErrorReason.TOO_MANY_STREAMS,
      retryAfterMs: 1000,
    });
    a.end(10);
    a.end(10); // a second end changes nothing
    expect(s.admitter.activity()).toEqual({ streams: 1, reservedTokens: 50 });
    b.end(5);
    expect(s.admitter.activity()).toEqual({ streams: 0, reservedTokens: 0 });
    expect(s.events).toEqual([
      "admitted acme",
      "streams acme 1",
      "admitted acme",
      "streams acme 1",
      "refused acme too_many_streams",
      "streams acme -1",
      "tokens acme 10",
      "streams acme -1",
      "tokens acme 5",
    ]);
    // 1000 - 100 - 50 + (100 - 10) + (50 - 5) = 985 left.
    s.admitter.admit(s.record, "m", 985);
  });

  it("a model outside the key's list is NOT_FOUND and counted as model_not_allowed", () => {
    const s = setup({}, ["a"]);
    expect(refusal(() => s.admitter.admit(s.record, "b", 1)).code).toBe(Code.NotFound);
    s.admitter.admit(s.record, "a", 1);
    expect(s.events[0]).toBe("refused acme model_not_allowed");
  });

  it("refusals are counted by reason", () => {
    const s = setup({ requestsPerMinute: 1, tokensPerMinute: 10 });
    s.admitter.admit(s.record, "m", 10);
    expect(refusal(() => s.admitter.admit(s.record, "m", 1)).reason).toBe(ErrorReason.RATE_LIMITED);
    s.advance(60_000);
    expect(refusal(() => s.admitter.admit(s.record, "m", 11)).reason).toBe(
      ErrorReason.TOKEN_BUDGET_EXHAUSTED,
    );
    expect(s.events.filter((e) => e.startsWith("refused"))).toEqual([
      "refused acme rate_limited",
      "refused acme token_budget",
    ]);
  });

  it("a key removed from the store loses its state: re-added, it starts with full buckets", () => {
    const s = setup({ requestsPerMinute: 1 });
    s.admitter.admit(s.record, "m", 1).end(1);
    expect(refusal(() => s.admitter.admit(s.record, "m", 1)).reason).toBe(ErrorReason.RATE_LIMITED);
    s.index.set([{ ...s.record }]); // a reload that keeps the key keeps its state
    expect(refusal(() => s.admitter.admit(s.record, "m", 1)).reason).toBe(ErrorReason.RATE_LIMITED);
    s.index.set([]);
    s.index.set([s.record]);
    s.admitter.admit(s.record, "m", 1);
  });
});

describe("authentication", () => {
  it("no credential and a wrong one are told apart; a valid one gives its key", () => {
    const s = setup({});
    expect(refusal(() => s.admitter.authenticate(""))).toMatchObject({
      code: Code.Unauthenticated,
      message: "an API key is required (authorization: Bearer <key>)",
      reason: ErrorReason.UNAUTHENTICATED,
    });
    expect(refusal(() => s.admitter.authenticate(`${s.secret}x`))).toMatchObject({
      code: Code.Unauthenticated,
      message: "the API key is not valid",
    });
    expect(s.admitter.authenticate(s.secret).id).toBe(s.record.id);
  });

  it("reads the secret of a Bearer header only", () => {
    expect(bearerOf("Bearer  kfr_abc ")).toBe("kfr_abc");
    expect(bearerOf("bearer kfr_abc")).toBe("");
    expect(bearerOf("Basic kfr_abc")).toBe("");
    expect(bearerOf(undefined)).toBe("");
    expect(bearerOf(null)).toBe("");
  });
});
