/**
 * Bounds retries so that a failing fleet is not hit by a retry storm: retries in progress may not exceed
 * `ratio` of the requests in flight, or `min`, whichever is more (Envoy's retry budget).
 */
export interface RetryBudget {
  /** A request entered the gateway; returns a function to call when it leaves. */
  enter(): () => void;
  /** Takes a retry slot if the budget allows; returns its release function, or undefined. */
  tryAcquire(): (() => void) | undefined;
  readonly inFlight: number;
}

export function createRetryBudget(ratio: number, min: number): RetryBudget {
  let inFlight = 0;
  let retries = 0;
  const once = (fn: () => void) => {
    let done = false;
    return () => {
      if (!done) {
        done = true;
        fn();
      }
    };
  };
  return {
    enter() {
      inFlight++;
      return once(() => {
        inFlight--;
      });
    },
    tryAcquire() {
      if (retries >= Math.max(min, Math.floor(ratio * inFlight))) return undefined;
      retries++;
      return once(() => {
        retries--;
      });
    },
    get inFlight() {
      return inFlight;
    },
  };
}
