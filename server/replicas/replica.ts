/**
 * A replica (one vLLM server) as the gateway sees it: where it is, whether it may take requests, and the
 * load signals routing reads. Objects are long-lived and mutated in place by discovery, the scraper, the
 * relay (in-flight counts, failures) and outlier detection; routing only reads them.
 */

/** Load signals scraped from the replica's /metrics. */
export interface ScrapedSignals {
  /** vllm:num_requests_waiting */
  readonly waiting: number;
  /** vllm:num_requests_running */
  readonly running: number;
  /** vllm:kv_cache_usage_perc (or the older vllm:gpu_cache_usage_perc), 0 to 1 */
  readonly kvCacheUsage: number;
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
  /** Consecutive failed attempts (reset by a success). */
  consecutiveFailures: number;
  /** Ejected by outlier detection until this time (monotonic ms); 0 when not ejected. */
  ejectedUntil: number;
  /** How many times it was ejected in a row (drives the backoff). */
  ejections: number;
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
    consecutiveFailures: 0,
    ejectedUntil: 0,
    ejections: 0,
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

/** Whether the scraped signals are fresh enough to route on. */
export function freshSignals(r: Replica, now: number, maxAgeMs: number): ScrapedSignals | undefined {
  return r.signals !== undefined && now - r.signals.scrapedAt <= maxAgeMs ? r.signals : undefined;
}
