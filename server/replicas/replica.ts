/**
 * A replica (one vLLM server) as the gateway sees it: where it is, whether it may take requests, and the
 * load signals routing reads. Objects are long-lived and mutated in place by discovery, the scraper, the
 * relay (in-flight counts, failures) and outlier detection; routing only reads them.
 */

import type { VllmSignals } from "./vllm-signals.js";

/** Load signals scraped from the replica's /metrics. */
export interface ScrapedSignals {
  /** vllm:num_requests_waiting */
  readonly waiting: number;
  /** vllm:num_requests_running */
  readonly running: number;
  /** vllm:kv_cache_usage_perc (or the older vllm:gpu_cache_usage_perc), 0 to 1 */
  readonly kvCacheUsage: number;
  /** vllm:lora_requests_info: adapters of running and waiting requests, and adapter slots. */
  readonly lora?: VllmSignals["lora"];
  /** When they were read, on the gateway's monotonic clock (ms). */
  readonly scrapedAt: number;
}

export interface Replica {
  /** Unique within the gateway: the base URL. */
  readonly id: string;
  readonly url: string;
  readonly model: string;
  readonly version: string;
  /** Where discovery found it: "static" or "kubernetes". */
  source: string;
  /** Discovery says it is ready (EndpointSlice condition; always true for static replicas). */
  ready: boolean;
  /** The last /health probe: true 200, false otherwise, undefined before the first probe. */
  healthy: boolean | undefined;
  /** Drained by an operator: no new requests. */
  draining: boolean;
  /** Requests this gateway has in flight on it. */
  inFlight: number;
  /** Requests sent since the last scrape: added to the scraped queue so bursts do not herd. */
  sentSinceScrape: number;
  /**
   * Prompt tokens (estimated) of this gateway's requests on it that have not had their first token yet:
   * the prefill work it still has to do for us. Flow control holds non-critical requests back while it
   * exceeds one engine step's budget, so that prefill stays short and a critical request's comes soon.
   */
  prefillTokens: number;
  signals: ScrapedSignals | undefined;
  /**
   * The scraper's current interval for it (ms): short under traffic, longer while it is idle and
   * unchanged. Its signals are trusted for that long (see freshSignals).
   */
  scrapeIntervalMs: number;
  /** Consecutive failed attempts (reset by a success). */
  consecutiveFailures: number;
  /** Ejected by outlier detection until this time (monotonic ms); 0 when not ejected. */
  ejectedUntil: number;
  /** How many times it was ejected in a row (drives the backoff). */
  ejections: number;
  /**
   * LoRA adapters it serves beyond its model's declared ones: loaded through the admin API, or read from
   * its /v1/models when the model discovers adapters.
   */
  adapters: ReadonlySet<string>;
}

export function createReplica(model: string, version: string, url: string, source: string): Replica {
  return {
    id: url,
    url,
    model,
    version,
    source,
    ready: true,
    healthy: undefined,
    draining: false,
    inFlight: 0,
    sentSinceScrape: 0,
    prefillTokens: 0,
    signals: undefined,
    scrapeIntervalMs: 0,
    consecutiveFailures: 0,
    ejectedUntil: 0,
    ejections: 0,
    adapters: new Set(),
  };
}

/** The routing state of a replica, as the admin API reports it. */
export type ReplicaStatus = "ready" | "draining" | "unhealthy" | "ejected";

export function replicaStatus(r: Replica, now: number): ReplicaStatus {
  if (r.draining) return "draining";
  if (!r.ready || r.healthy === false) return "unhealthy";
  if (r.ejectedUntil > now) return "ejected";
  return "ready";
}

/** Whether routing may send a new request to the replica now. */
export function isEligible(r: Replica, now: number): boolean {
  return replicaStatus(r, now) === "ready";
}

/**
 * The scraped signals if they are fresh enough to route on: no older than `maxAgeMs`, or, for a replica
 * the scraper visits less often because nothing changed there, than its next scrape (the relay brings
 * that forward as soon as it sends the replica a request).
 */
export function freshSignals(r: Replica, now: number, maxAgeMs: number): ScrapedSignals | undefined {
  // Half an interval more, for a scrape that comes late by its own duration.
  const age = Math.max(maxAgeMs, 1.5 * r.scrapeIntervalMs);
  return r.signals !== undefined && now - r.signals.scrapedAt <= age ? r.signals : undefined;
}
