/**
 * Fault injection, so that the gateway's failover, timeouts and error mapping can be tested against
 * something that fails like a real replica does.
 *
 * A request picks its fault with the `x-sim-fault` header, directives separated by commas:
 *   refuse              the connection is reset before any response (a crashed or unreachable replica)
 *   status=<code>       an HTTP error before the first token (429 and 503 carry Retry-After: retry-after=<s>)
 *   error-after=<n>     after n tokens, vLLM's in-band error event, then [DONE]
 *   drop-after=<n>      after n tokens, the connection is dropped without [DONE]
 *   stall=<ms>          nothing is sent for ms (after stall-after=<n> tokens, default 0: before the first)
 *   slow=<factor>       this request makes a token only every <factor> engine steps
 * A replica also injects faults at random with per-request rates (FaultRates), set by flags at start and
 * at run time through POST /sim/faults. Rates draw from a seeded generator, so runs are repeatable.
 */
import { z } from "zod";
import { createRng } from "../../common/random.js";

/** The fault one request will suffer. */
export interface RequestFault {
  refuse?: true;
  status?: number;
  retryAfterSeconds?: number;
  errorAfter?: number;
  dropAfter?: number;
  stallMs?: number;
  stallAfter?: number;
  slow?: number;
}

/** Per-replica fault rates, each a probability per request (0 to 1). */
export interface FaultRates {
  /** Reset the connection. */
  refuse: number;
  /** Answer `statusCode` before the first token. */
  status: number;
  /** The status used by `status`. Default 503. */
  statusCode: number;
  /** Fail in-band after `afterTokens` tokens. */
  errorMidStream: number;
  /** Drop the connection after `afterTokens` tokens. */
  drop: number;
  /** Token count for errorMidStream and drop. Default 5. */
  afterTokens: number;
  /** Stall for `stallMs` after `stallAfterTokens` tokens. */
  stall: number;
  /** Default 1000. */
  stallMs: number;
  /** Tokens sent before a stall; default 0 (before the first token). */
  stallAfterTokens: number;
}

export const noFaults: Readonly<FaultRates> = Object.freeze({
  refuse: 0,
  status: 0,
  statusCode: 503,
  errorMidStream: 0,
  drop: 0,
  afterTokens: 5,
  stall: 0,
  stallMs: 1000,
  stallAfterTokens: 0,
});

const probability = z.number().min(0).max(1);

/** Validates a (partial) update of fault rates; unknown keys are rejected by name. */
export const faultRatesSchema = z
  .object({
    refuse: probability,
    status: probability,
    statusCode: z.number().int().min(400).max(599),
    errorMidStream: probability,
    drop: probability,
    afterTokens: z.number().int().nonnegative(),
    stall: probability,
    stallMs: z.number().int().nonnegative().max(600_000),
    stallAfterTokens: z.number().int().nonnegative(),
  })
  .partial()
  .strict();

/** Parses the x-sim-fault header; throws an Error naming the bad directive. */
export function parseFaultHeader(header: string): RequestFault {
  const fault: RequestFault = {};
  for (const raw of header.split(",")) {
    const directive = raw.trim();
    if (directive === "") continue;
    const [key, value] = directive.split("=", 2).map((s) => s.trim()) as [string, string | undefined];
    const int = (min: number, max: number): number => {
      const n = Number(value);
      if (value === undefined || !Number.isInteger(n) || n < min || n > max) {
        throw new Error(`x-sim-fault: ${key} needs an integer from ${min} to ${max}`);
      }
      return n;
    };
    switch (key) {
      case "refuse":
        fault.refuse = true;
        break;
      case "status":
        fault.status = int(400, 599);
        break;
      case "retry-after":
        fault.retryAfterSeconds = int(0, 3600);
        break;
      case "error-after":
        fault.errorAfter = int(0, 1_000_000);
        break;
      case "drop-after":
        fault.dropAfter = int(0, 1_000_000);
        break;
      case "stall":
        fault.stallMs = int(0, 600_000);
        break;
      case "stall-after":
        fault.stallAfter = int(0, 1_000_000);
        break;
      case "slow": {
        const f = Number(value);
        if (!(f >= 1 && f <= 1000)) throw new Error("x-sim-fault: slow needs a factor from 1 to 1000");
        fault.slow = f;
        break;
      }
      default:
        throw new Error(`x-sim-fault: unknown directive "${key}"`);
    }
  }
  return fault;
}

/** Draws faults for requests that did not ask for one. */
export interface FaultDice {
  rates(): FaultRates;
  /** Validates and applies a partial update (JSON from POST /sim/faults); throws ZodError naming bad keys. */
  setRates(update: unknown): FaultRates;
  /** The fault the next request suffers, if any. */
  roll(): RequestFault;
}

/** Validates a partial update and merges it over `base`. */
function mergeRates(base: FaultRates, update: unknown): FaultRates {
  const parsed = faultRatesSchema.parse(update);
  const merged = { ...base };
  for (const [key, value] of Object.entries(parsed) as [keyof FaultRates, number | undefined][]) {
    if (value !== undefined) merged[key] = value;
  }
  return merged;
}

export function createFaultDice(initial: Partial<FaultRates>, seed: number): FaultDice {
  let rates = mergeRates(noFaults, initial);
  const rng = createRng(seed);
  return {
    rates: () => ({ ...rates }),
    setRates(update) {
      rates = mergeRates(rates, update);
      return { ...rates };
    },
    roll() {
      // One draw per kind, in a fixed order, so that a seed gives the same sequence of faults.
      const r = rates;
      const draws = [rng(), rng(), rng(), rng(), rng()] as const;
      if (draws[0] < r.refuse) return { refuse: true };
      if (draws[1] < r.status) return { status: r.statusCode };
      if (draws[2] < r.errorMidStream) return { errorAfter: r.afterTokens };
      if (draws[3] < r.drop) return { dropAfter: r.afterTokens };
      if (draws[4] < r.stall) return { stallMs: r.stallMs, stallAfter: r.stallAfterTokens };
      return {};
    },
  };
}
