/**
 * Time for the simulator: the engine reads the clock and sets timers only through the Clock interface, so
 * the same code runs in real time (HTTP servers) and in virtual time (benchmarks and tests drive a
 * discrete-event loop far faster than real time, with the same per-request timings).
 *
 * Times are milliseconds as floating-point numbers. Timers take an absolute due time so that a timer
 * firing late in real time does not push every later event back (no drift accumulates).
 */

/** Cancels a timer; calling it after the timer fired is harmless. */
export type CancelTimer = () => void;

/** The simulator's source of time. */
export interface Clock {
  /** The current time in milliseconds. */
  now(): number;
  /** Runs `fn` once at `atMs` (or as soon as possible if that is already past). */
  setTimer(atMs: number, fn: () => void): CancelTimer;
}

/** Wall-clock time from `performance.now()` and `setTimeout`. */
export function createRealClock(): Clock {
  return {
    now: () => performance.now(),
    setTimer(atMs, fn) {
      const handle = setTimeout(fn, Math.max(0, atMs - performance.now()));
      return () => clearTimeout(handle);
    },
  };
}

/** A clock whose time only moves when its event loop runs. */
export interface VirtualClock extends Clock {
  /**
   * Runs timers in due-time order (ties in the order they were set), advancing `now()` to each, until none
   * remain or the next is after `untilMs`. Timers may set more timers. Returns the number of timers run.
   */
  run(untilMs?: number): number;
  /** The number of timers waiting. */
  pending(): number;
  /** When the next timer is due (cancelled ones skipped), or undefined when none waits. */
  nextAt(): number | undefined;
}

interface VirtualTimer {
  at: number;
  seq: number;
  fn: () => void;
  cancelled: boolean;
}

/** Creates a virtual clock starting at `startMs` (default 0). */
export function createVirtualClock(startMs = 0): VirtualClock {
  let now = startMs;
  let seq = 0;
  const heap: VirtualTimer[] = [];

  const before = (a: VirtualTimer, b: VirtualTimer) => a.at < b.at || (a.at === b.at && a.seq < b.seq);

  function push(timer: VirtualTimer) {
    heap.push(timer);
    let i = heap.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!before(heap[i] as VirtualTimer, heap[parent] as VirtualTimer)) break;
      [heap[i], heap[parent]] = [heap[parent] as VirtualTimer, heap[i] as VirtualTimer];
      i = parent;
    }
  }

  function pop(): VirtualTimer | undefined {
    const top = heap[0];
    const last = heap.pop();
    if (heap.length > 0 && last !== undefined) {
      heap[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < heap.length && before(heap[l] as VirtualTimer, heap[m] as VirtualTimer)) m = l;
        if (r < heap.length && before(heap[r] as VirtualTimer, heap[m] as VirtualTimer)) m = r;
        if (m === i) break;
        [heap[i], heap[m]] = [heap[m] as VirtualTimer, heap[i] as VirtualTimer];
        i = m;
      }
    }
    return top;
  }

  return {
    now: () => now,
    setTimer(atMs, fn) {
      const timer: VirtualTimer = { at: Math.max(atMs, now), seq: seq++, fn, cancelled: false };
      push(timer);
      return () => {
        timer.cancelled = true;
      };
    },
    run(untilMs = Number.POSITIVE_INFINITY) {
      let ran = 0;
      while (heap.length > 0 && (heap[0] as VirtualTimer).at <= untilMs) {
        const timer = pop() as VirtualTimer;
        if (timer.cancelled) continue;
        now = timer.at;
        timer.fn();
        ran++;
      }
      if (Number.isFinite(untilMs) && untilMs > now) now = untilMs;
      return ran;
    },
    pending: () => heap.filter((t) => !t.cancelled).length,
    nextAt() {
      while (heap.length > 0 && (heap[0] as VirtualTimer).cancelled) pop();
      return heap[0]?.at;
    },
  };
}
