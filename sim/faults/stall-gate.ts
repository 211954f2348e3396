/**
 * The stall fault (`x-sim-fault: stall=<ms>,stall-after=<n>`): a gate in front of a response's writes that
 * holds them back for a while, as a replica that freezes mid-stream would. Writes keep their order; a
 * cancelled gate drops what it holds.
 */
import type { Clock } from "../engine/clock.js";
import type { RequestFault } from "./faults.js";

/** A gate for one response. */
export interface StallGate {
  /** Writes now, or when the stall ends. `tokenCount` is the number of tokens this write completes. */
  write(fn: () => void, tokenCount?: number): void;
  /** Drops the held writes (the client went away). */
  cancel(): void;
}

export function createStallGate(fault: RequestFault, clock: Clock): StallGate {
  const stallAfter = fault.stallAfter ?? 0;
  const queued: (() => void)[] = [];
  let openAt: number | undefined =
    fault.stallMs !== undefined && stallAfter === 0 ? clock.now() + fault.stallMs : undefined;
  let timerSet = false;
  let cancel: (() => void) | undefined;

  function flush() {
    for (const write of queued.splice(0)) write();
  }

  return {
    write(fn, tokenCount = 0) {
      if (
        openAt === undefined &&
        fault.stallMs !== undefined &&
        stallAfter > 0 &&
        tokenCount === stallAfter + 1
      ) {
        openAt = clock.now() + fault.stallMs;
      }
      if (openAt === undefined || clock.now() >= openAt) {
        if (queued.length === 0) return fn();
        queued.push(fn);
        return flush();
      }
      queued.push(fn);
      if (!timerSet) {
        timerSet = true;
        cancel = clock.setTimer(openAt, flush);
      }
    },
    cancel() {
      cancel?.();
      queued.length = 0;
    },
  };
}
