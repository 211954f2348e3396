/**
 * Outlier detection: a replica that fails `consecutiveFailures` attempts in a row is ejected (no new
 * requests) for baseMs, doubling with each further ejection up to maxMs; after that it gets traffic again,
 * and one success clears its record. The last eligible replica of a version is never ejected: a degraded
 * replica beats none.
 */
import type { GatewayConfig } from "../config/gateway-config.js";
import { isEligible, type Replica } from "./replica.js";

export interface OutlierDetector {
  success(replica: Replica): void;
  /** Returns true if this failure ejected the replica. */
  failure(replica: Replica, peers: readonly Replica[], now: number): boolean;
}

export function createOutlierDetector(config: GatewayConfig["ejection"]): OutlierDetector {
  return {
    success(replica) {
      replica.consecutiveFailures = 0;
      if (replica.ejectedUntil === 0) replica.ejections = 0;
    },
    failure(replica, peers, now) {
      replica.consecutiveFailures++;
      if (replica.consecutiveFailures < config.consecutiveFailures) return false;
      const othersEligible = peers.some((p) => p !== replica && isEligible(p, now));
      if (!othersEligible) return false;
      replica.ejectedUntil = now + Math.min(config.baseMs * 2 ** replica.ejections, config.maxMs);
      replica.ejections++;
      replica.consecutiveFailures = 0;
      return true;
    },
  };
}
