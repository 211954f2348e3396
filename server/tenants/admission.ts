/**
 * Admission of inference requests when API keys are configured: who is calling (the key behind
 * `authorization: Bearer <secret>`), whether the key may use the model, and whether its limits allow the
 * request now. Limits are per key (a tenant with several keys has each key's limits):
 *
 * - requests per minute and tokens per minute are token buckets that hold a minute's worth and refill
 *   continuously, so a burst up to the limit passes and the average rate is held;
 * - a request reserves its prompt estimate (characters / 4) plus its max_tokens when admitted; when it
 *   ends, the reservation is settled with the real usage (the difference is refunded, or charged when the
 *   estimate was low), so the bucket counts exactly the tokens the key used;
 * - concurrent streams are counted from admission to the end of the stream.
 *
 * Over a limit: RESOURCE_EXHAUSTED (HTTP 429) with the time until the request would pass as retry-after.
 * Every state here is bounded by the number of keys.
 */
import { Code } from "@connectrpc/connect";
import { ErrorReason } from "../../gen/es/kinfer/inference/v1/inference_pb.js";
import { gatewayError, modelNotFound } from "../errors/gateway-error.js";
import { type ApiKeyLimits, type ApiKeyRecord, type KeyStore, mayUse } from "./key-store.js";

/** A request admitted under a key; `end` must be called exactly once, with the real usage. */
export interface Admission {
  readonly tenant: string;
  readonly keyId: string;
  end(usedTokens: number): void;
}

export interface TenantUsage {
  admitted(tenant: string): void;
  refused(
    tenant: string,
    reason: "rate_limited" | "token_budget" | "too_many_streams" | "model_not_allowed",
  ): void;
  streams(tenant: string, delta: number): void;
  tokens(tenant: string, tokens: number): void;
}

interface Bucket {
  level: number;
  at: number;
}

interface KeyState {
  requests: Bucket;
  tokens: Bucket;
  streams: number;
  limits: ApiKeyLimits;
}

/** Adds what a bucket refilled since it was last seen (capacity per minute), capped at a minute's worth. */
function refill(b: Bucket, perMinute: number, now: number): void {
  b.level = Math.min(perMinute, b.level + ((now - b.at) * perMinute) / 60_000);
  b.at = now;
}

/** Milliseconds until a bucket holds `need`. */
const waitMs = (b: Bucket, need: number, perMinute: number) =>
  Math.ceil(((need - b.level) * 60_000) / perMinute);

export interface Admitter {
  /** The valid key behind a credential; UNAUTHENTICATED without one. Called before anything else. */
  authenticate(credential: string): ApiKeyRecord;
  /**
   * Admits a validated request for `model` (or its LoRA `adapter`, when the request names one) under its
   * key. Throws NOT_FOUND for a model or adapter the key may not use (refused as one not served) or
   * RESOURCE_EXHAUSTED over a limit.
   */
  admit(key: ApiKeyRecord, model: string, estimatedTokens: number, adapter?: string): Admission;
  /** Streams open and tokens reserved by admitted requests that have not ended, over every key. */
  activity(): { readonly streams: number; readonly reservedTokens: number };
}

export function createAdmitter(store: KeyStore, usage: TenantUsage, now: () => number): Admitter {
  const states = new Map<string, KeyState>();
  let openStreams = 0;
  let reservedTokens = 0;
  const stateOf = (key: ApiKeyRecord): KeyState => {
    let s = states.get(key.id);
    if (s === undefined) {
      const t = now();
      s = {
        requests: { level: key.limits.requestsPerMinute, at: t },
        tokens: { level: key.limits.tokensPerMinute, at: t },
        streams: 0,
        limits: key.limits,
      };
      states.set(key.id, s);
    }
    s.limits = key.limits; // reloaded limits apply at once
    return s;
  };
  // Keys removed from the store lose their state (in-flight admissions still end on the old object).
  store.onChange(() => {
    const live = new Set(store.list({ includeRevoked: false }).map((k) => k.id));
    for (const id of states.keys()) if (!live.has(id)) states.delete(id);
  });

  return {
    activity: () => ({ streams: openStreams, reservedTokens }),
    authenticate(credential) {
      const key = credential === "" ? undefined : store.authenticate(credential);
      if (key === undefined) {
        throw gatewayError(
          Code.Unauthenticated,
          ErrorReason.UNAUTHENTICATED,
          credential === ""
            ? "an API key is required (authorization: Bearer <key>)"
            : "the API key is not valid",
        );
      }
      return key;
    },
    admit(key, model, estimatedTokens, adapter) {
      const tenant = key.tenant;
      if (!mayUse(key, model, adapter)) {
        usage.refused(tenant, "model_not_allowed");
        throw modelNotFound(adapter ?? model);
      }
      const s = stateOf(key);
      const { requestsPerMinute: rpm, tokensPerMinute: tpm, maxConcurrentStreams: maxStreams } = s.limits;
      const t = now();
      if (maxStreams > 0 && s.streams >= maxStreams) {
        usage.refused(tenant, "too_many_streams");
        throw gatewayError(
          Code.ResourceExhausted,
          ErrorReason.TOO_MANY_STREAMS,
          `the API key has ${maxStreams} streams open, its limit`,
          1000,
        );
      }
      if (rpm > 0) {
        refill(s.requests, rpm, t);
        if (s.requests.level < 1) {
          usage.refused(tenant, "rate_limited");
          throw gatewayError(
            Code.ResourceExhausted,
            ErrorReason.RATE_LIMITED,
            `the API key's limit of ${rpm} requests per minute is reached`,
            waitMs(s.requests, 1, rpm),
          );
        }
      }
      if (tpm > 0) {
        refill(s.tokens, tpm, t);
        if (estimatedTokens > tpm) {
          usage.refused(tenant, "token_budget");
          throw gatewayError(
            Code.ResourceExhausted,
            ErrorReason.TOKEN_BUDGET_EXHAUSTED,
            `the request may use ${estimatedTokens} tokens, more than the API key's ${tpm} per minute; lower max_tokens`,
          );
        }
        if (s.tokens.level < estimatedTokens) {
          usage.refused(tenant, "token_budget");
          throw gatewayError(
            Code.ResourceExhausted,
            ErrorReason.TOKEN_BUDGET_EXHAUSTED,
            `the API key's limit of ${tpm} tokens per minute is reached`,
            waitMs(s.tokens, estimatedTokens, tpm),
          );
        }
      }
      // Admitted: take one request and reserve the estimate.
      if (rpm > 0) s.requests.level -= 1;
      if (tpm > 0) s.tokens.level -= estimatedTokens;
      s.streams++;
      openStreams++;
      reservedTokens += estimatedTokens;
      usage.admitted(tenant);
      usage.streams(tenant, 1);
      let ended = false;
      return {
        tenant,
        keyId: key.id,
        end(usedTokens) {
          if (ended) return;
          ended = true;
          s.streams--;
          openStreams--;
          reservedTokens -= estimatedTokens;
          usage.streams(tenant, -1);
          usage.tokens(tenant, usedTokens);
          if (tpm > 0) {
            refill(s.tokens, s.limits.tokensPerMinute, now());
            // Refund the unused reservation, or charge the excess.
            s.tokens.level = Math.min(
              s.limits.tokensPerMinute,
              s.tokens.level + estimatedTokens - usedTokens,
            );
          }
        },
      };
    },
  };
}

/** The secret of an `authorization: Bearer <secret>` header; "" when there is none. */
export function bearerOf(header: string | null | undefined): string {
  return header?.startsWith("Bearer ") ? header.slice("Bearer ".length).trim() : "";
}
