/**
 * First tokens first. A vLLM engine step emits a token for every running sequence at once, so a gateway
 * relaying hundreds of streams receives them in bursts, one chunk per stream; a new request's first token
 * arrives in the same burst and, processed in arrival order, waits for every other stream's token to be
 * parsed, re-encoded and written before it. Streams that already have their first token therefore hand
 * the rest of their work on each chunk to this queue, which runs after the current I/O phase
 * (setImmediate): first tokens go out at once, and the other streams' tokens right after, in arrival order.
 * The queue is released a slice at a time, with the event loop's I/O phase in between, so that a new
 * request or a first token arriving during a burst waits for one slice, not for the whole burst.
 * Nothing is dropped or reordered within a stream; the queue holds at most one entry per open stream.
 */
const queue: (() => void)[] = [];
let head = 0;
let scheduled = false;
/**
 * Streams resumed per turn of the event loop (about half a millisecond of relaying). At 256 streams, 8 gave
 * the lowest added TTFT of 4, 8, 16 and 32 (BENCHMARKS.md).
 */
const SLICE = 8;

function drain(): void {
  scheduled = false;
  const end = Math.min(queue.length, head + SLICE);
  for (; head < end; head++) (queue[head] as () => void)();
  if (head < queue.length) {
    scheduled = true;
    setImmediate(drain);
  } else {
    queue.length = 0;
    head = 0;
  }
}

/**
 * Runs `work` after the I/O callbacks of the current event loop turn (and their first tokens) have run.
 * A callback rather than a promise: it runs for every relayed token, and a stream passes the same
 * function each time, so the queue allocates nothing per token.
 */
export function afterFirstTokens(work: () => void): void {
  queue.push(work);
  if (!scheduled) {
    scheduled = true;
    setImmediate(drain);
  }
}
