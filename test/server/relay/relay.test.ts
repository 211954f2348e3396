/**
 * The relay on its own, against scripted replicas (test/helpers/scripted-fleet.ts): what it sends where,
 * the events it yields and their timings, and each way an attempt ends: retried on another replica before
 * the first token (503, 429, a refused connection, a first-token timeout, a lost adapter) within
 * maxAttempts and the retry budget, or ended with a typed error after it (a broken stream, an inter-token
 * timeout); who is blamed (outlier detection, health, the scraper's suspicion) and what is left behind
 * (in-flight and pending-prefill counts, the retry budget, the upstream request). The integration tests
 * show the same through every protocol; these name each decision, fast enough to run against each mutant.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { Agent } from "undici";
import { afterEach, describe, expect, it } from "vitest";
import { ErrorDetailSchema, ErrorReason } from "../../../gen/es/kinfer/inference/v1/inference_pb.js";
import { parseGatewayConfig } from "../../../server/config/gateway-config.js";
import { createStaticSource } from "../../../server/discovery/static-source.js";
import {
  embeddingAnswerTooLarge,
  type RelayDeps,
  type RelayTrace,
  relay,
} from "../../../server/relay/relay.js";
import { createRetryBudget } from "../../../server/relay/retry-budget.js";
import { createOutlierDetector } from "../../../server/replicas/outlier-detection.js";
import type { Replica } from "../../../server/replicas/replica.js";
import {
  type InferenceEvent,
  type InferenceRequest,
  prefixTextOf,
} from "../../../server/request/inference-request.js";
import { createRouter } from "../../../server/routing/router.js";
import { createRoutingTable, type ModelEntry } from "../../../server/routing/routing-table.js";
import { waitFor } from "../../helpers/idle.js";
import {
  type Answer,
  chunk,
  finishChunk,
  type ScriptedFleet,
  type SeenRequest,
  silence,
  sse,
  startScriptedFleet,
  status,
  streamOf,
} from "../../helpers/scripted-fleet.js";

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0)) await c();
});

interface Rig {
  readonly fleet: ScriptedFleet;
  readonly model: ModelEntry;
  readonly deps: RelayDeps;
  /** Replicas in the version's order (the round-robin picks the first, then the others in turn). */
  readonly replicas: readonly Replica[];
  /** Sets the answer of the replica at `index` in the version's order. */
  answer(index: number, answer: Answer): void;
  /** Requests the replica at `index` was sent. */
  seenBy(index: number): SeenRequest[];
  readonly calls: {
    routed: unknown[][];
    sent: string[];
    suspect: string[];
    retried: unknown[][];
    ejected: string[];
    failures: string[];
  };
}

async function rig(
  replicas: number,
  config: Record<string, unknown> = {},
  adapters: string[] = [],
): Promise<Rig> {
  const fleet = await startScriptedFleet(replicas);
  const dispatcher = new Agent({ headersTimeout: 0, bodyTimeout: 0 });
  cleanups.push(async () => {
    await dispatcher.destroy();
    await fleet.close();
  });
  const parsed = parseGatewayConfig({
    routing: { algorithm: "round-robin" },
    ...config,
    models: [
      {
        name: "m",
        adapters,
        versions: [{ name: "v1", servedModelName: "m-served", replicas: [...fleet.urls] }],
      },
    ],
  });
  const table = createRoutingTable();
  table.apply(parsed, createStaticSource(parsed).endpoints(), "static");
  const model = table.model("m") as ModelEntry;
  const now = () => performance.now();
  const calls: Rig["calls"] = { routed: [], sent: [], suspect: [], retried: [], ejected: [], failures: [] };
  const deps: RelayDeps = {
    config: parsed,
    // Round-robin from the first replica (the turn starts at random() x 1000).
    router: createRouter({ now, random: () => 0, prefixIndex: parsed.prefixIndex }),
    outliers: createOutlierDetector(parsed.ejection),
    retryBudget: createRetryBudget(parsed.retry.budgetRatio, parsed.retry.minRetries),
    dispatcher,
    now,
    embeddingSizes: new Map(),
    onRouted: (...args) => calls.routed.push(args),
    onSend: (r) => calls.sent.push(r.id),
    onSuspect: (r) => calls.suspect.push(r.id),
    onRetry: (...args) => calls.retried.push(args),
    onEjected: (r) => calls.ejected.push(r.id),
    onUpstreamFailure: (r, err) => calls.failures.push(`${r.id} ${err.failure}`),
  };
  const ordered = model.versions[0]?.replicas ?? [];
  const serverOf = (i: number) => fleet.urls.indexOf(ordered[i]?.url ?? "");
  return {
    fleet,
    model,
    deps,
    replicas: ordered,
    answer: (i, a) => fleet.answer(serverOf(i), a),
    seenBy: (i) => fleet.seen.filter((s) => s.replica === serverOf(i)),
    calls,
  };
}

const chat = (over: Partial<InferenceRequest> = {}): InferenceRequest => ({
  requestId: "req-1",
  protocol: "openai",
  model: "m",
  messages: [{ role: "user", content: "a prompt of 27 characters." }],
  sampling: { stop: [] },
  affinityKey: "",
  version: "",
  passthrough: {},
  signal: new AbortController().signal,
  credential: "",
  ...over,
});

const reasonOf = (err: ConnectError | undefined) => err?.findDetails(ErrorDetailSchema)[0]?.reason;
const retryAfterOf = (err: ConnectError | undefined) =>
  Number(err?.findDetails(ErrorDetailSchema)[0]?.retryAfter?.seconds ?? -1);

const newTrace = (): RelayTrace => ({ version: "", replica: "", attempts: 0 });

/** Runs the relay to its end: its events, and the error it ended with (undefined when it finished). */
async function run(
  r: Rig,
  req: InferenceRequest = chat(),
  acceptedAt = performance.now(),
  trace = newTrace(),
): Promise<{ events: InferenceEvent[]; error: ConnectError | undefined; trace: RelayTrace }> {
  const events: InferenceEvent[] = [];
  try {
    for await (const e of relay(req, r.model, r.deps, acceptedAt, trace)) events.push(e);
    return { events, error: undefined, trace };
  } catch (err) {
    if (!(err instanceof ConnectError)) throw err;
    return { events, error: err, trace };
  }
}

/** Nothing held: no request in flight on a replica, no pending prefill, no retry slot taken. */
function expectIdle(r: Rig) {
  for (const rep of r.replicas) {
    expect(rep.inFlight).toBe(0);
    expect(rep.prefillTokens).toBe(0);
  }
  // The budget's minimum is free again (3 by default): every retry taken was released.
  const taken = [1, 2, 3].map(() => r.deps.retryBudget.tryAcquire());
  expect(taken.every((t) => t !== undefined)).toBe(true);
  for (const t of taken) t?.();
}

const until = (cond: () => boolean, ms?: number) => waitFor(cond, "the condition", ms);

describe("a request that succeeds", () => {
  it("goes to the replica picked, with the served model name and the trace's context, and yields start, deltas and finish", async () => {
    const r = await rig(2);
    r.answer(0, (_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      setTimeout(() => {
        res.end(
          sse(
            chunk("Hel", { prompt: 7, completion: 1, cached: 2 }),
            chunk("lo", { prompt: 7, completion: 2, cached: 2 }),
            finishChunk("length", "x"),
            "[DONE]",
          ),
        );
      }, 60);
    });
    (r.replicas[0] as Replica).consecutiveFailures = 3; // a success clears the replica's record
    const ends: (string | undefined)[] = [];
    const attemptsStarted: unknown[][] = [];
    const span = {
      attempt(url: string, n: number) {
        attemptsStarted.push([url, n]);
        return {
          headers: { traceparent: `00-${"a".repeat(32)}-${"b".repeat(16)}-01` },
          end: (f?: string) => ends.push(f),
        };
      },
      end() {},
    };
    const acceptedAt = performance.now() - 5000;
    const { events, error, trace } = await run(r, chat({ span }), acceptedAt);
    expect(error).toBeUndefined();
    const [start, d1, d2, finish, ...more] = events;
    expect(more).toEqual([]);
    expect(start).toMatchObject({ type: "start", requestId: "req-1", model: "m", version: "v1" });
    const timing = (start as Extract<InferenceEvent, { type: "start" }>).timing;
    expect(timing?.gatewayMs).toBeGreaterThanOrEqual(5000);
    expect(timing?.gatewayMs).toBeLessThan(5000 + 1000);
    expect(timing?.upstreamMs).toBeGreaterThanOrEqual(50);
    expect(timing?.upstreamMs).toBeLessThan(1000);
    expect(d1).toEqual({ type: "delta", text: "Hel", tokenCount: 1 });
    expect(d2).toEqual({ type: "delta", text: "lo", tokenCount: 1 });
    expect(finish).toMatchObject({
      type: "finish",
      finishReason: "length",
      matchedStop: "x",
      usage: { promptTokens: 7, completionTokens: 2, cachedTokens: 2 },
    });
    const f = finish as Extract<InferenceEvent, { type: "finish" }>;
    expect(f.timeToFirstTokenMs).toBeGreaterThanOrEqual(5050);
    expect(f.timeToFirstTokenMs).toBeLessThan(6000);
    expect(f.totalMs).toBeGreaterThanOrEqual(f.timeToFirstTokenMs);
    expect(f.totalMs).toBeLessThan(6000);
    expect(trace).toEqual({
      version: "v1",
      replica: r.replicas[0]?.id,
      attempts: 1,
      usage: { promptTokens: 7, completionTokens: 2, cachedTokens: 2 },
    });
    // What the replica got.
    const [sent] = r.seenBy(0);
    expect(sent?.path).toBe("/v1/chat/completions");
    expect(sent?.body).toMatchObject({ model: "m-served", stream: true, messages: [{ role: "user" }] });
    expect(sent?.headers["x-request-id"]).toBe("req-1");
    expect(sent?.headers.traceparent).toBe(`00-${"a".repeat(32)}-${"b".repeat(16)}-01`);
    expect(attemptsStarted).toEqual([[r.replicas[0]?.url, 1]]);
    expect(ends).toEqual([undefined]);
    // Who was told.
    expect(r.calls.routed).toEqual([["m", "v1", "round-robin"]]);
    expect(r.calls.sent).toEqual([r.replicas[0]?.id]);
    expect(r.replicas[0]?.sentSinceScrape).toBe(1);
    expect(r.replicas[0]?.consecutiveFailures).toBe(0);
    expect(r.calls.retried).toEqual([]);
    expect(r.calls.failures).toEqual([]);
    expectIdle(r);
  });

  it("sends a prompt to /v1/completions, and an adapter as the model", async () => {
    const r = await rig(1, {}, ["sql"]);
    r.answer(0, streamOf(["x"]));
    const { prompt: _, ...base } = chat();
    const { messages: __, ...noMessages } = base;
    const { events } = await run(r, {
      ...noMessages,
      prompt: "Once upon",
      adapter: "sql",
    } as InferenceRequest);
    expect(r.seenBy(0)[0]?.path).toBe("/v1/completions");
    expect(r.seenBy(0)[0]?.body).toMatchObject({ model: "sql", prompt: "Once upon" });
    expect(events[0]).toMatchObject({ type: "start", model: "sql" });
  });

  it("maps vLLM's finish reasons (unknown ones are unspecified), and counts relayed tokens when the replica reports no usage", async () => {
    const r = await rig(1);
    const reasons: Record<string, string> = {
      stop: "stop",
      length: "length",
      abort: "abort",
      tool_calls: "tool_calls",
      something_new: "unspecified",
    };
    for (const [vllm, ours] of Object.entries(reasons)) {
      r.answer(0, (_req, res) => {
        res.writeHead(200, { "content-type": "text/event-stream" });
        res.end(sse(chunk("a"), chunk("b"), chunk("c"), finishChunk(vllm), "[DONE]"));
      });
      const { events, error } = await run(r);
      expect(error).toBeUndefined();
      expect(events.at(-1)).toMatchObject({
        type: "finish",
        finishReason: ours,
        matchedStop: "",
        usage: { promptTokens: 0, completionTokens: 3, cachedTokens: 0 },
      });
    }
  });

  it("a replica that closes right after its finish chunk (no [DONE]) has finished; one that ends without a finish has not", async () => {
    const r = await rig(1);
    r.answer(0, (_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.write(sse(chunk("a"), finishChunk("stop")));
      setTimeout(() => res.destroy(), 30);
    });
    const ok = await run(r);
    expect(ok.error).toBeUndefined();
    expect(ok.events.at(-1)).toMatchObject({ type: "finish", finishReason: "stop" });
    expect(r.replicas[0]?.consecutiveFailures).toBe(0);

    r.answer(0, (_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.end(sse(chunk("a"), "[DONE]"));
    });
    const broken = await run(r);
    expect(broken.events.map((e) => e.type)).toEqual(["start", "delta"]);
    expect(broken.error?.code).toBe(Code.Unavailable);
    expect(reasonOf(broken.error)).toBe(ErrorReason.UPSTREAM_FAILED);
    expect(r.replicas[0]?.consecutiveFailures).toBe(1);
    expect(r.seenBy(0)).toHaveLength(2); // not retried after its first token
    expectIdle(r);
  });

  it("holds the prompt's estimated tokens as the replica's pending prefill until its first token", async () => {
    const r = await rig(1);
    let release: () => void = () => {};
    r.answer(0, (_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      release = () => res.end(sse(chunk("a"), finishChunk("stop"), "[DONE]"));
    });
    const gen = relay(chat(), r.model, r.deps, performance.now(), newTrace());
    const first = gen.next();
    await until(() => r.seenBy(0).length === 1);
    const rep = r.replicas[0] as Replica;
    // The prompt's text, about 4 characters a token.
    expect(rep.prefillTokens).toBe(Math.ceil(prefixTextOf(chat()).length / 4));
    expect(rep.prefillTokens).toBeGreaterThan(5);
    expect(rep.inFlight).toBe(1);
    release();
    expect((await first).value).toMatchObject({ type: "start" });
    expect(rep.prefillTokens).toBe(0);
    expect(rep.inFlight).toBe(1);
    for await (const _ of { [Symbol.asyncIterator]: () => gen }) {
    }
    expectIdle(r);
  });

  it("a consumer that stops at the finish event leaves a successful attempt; one that stops before it cancels the attempt", async () => {
    const r = await rig(1);
    r.answer(0, streamOf(["a", "b"]));
    const ends: (string | undefined)[] = [];
    const span = { attempt: () => ({ headers: {}, end: (f?: string) => ends.push(f) }), end() {} };
    for await (const e of relay(chat({ span }), r.model, r.deps, performance.now(), newTrace()))
      if (e.type === "finish") break;
    // A replica still generating when the consumer stops: its request is closed (vLLM frees the sequence).
    r.answer(0, (_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.write(sse(chunk("a")));
    });
    for await (const e of relay(chat({ span }), r.model, r.deps, performance.now(), newTrace()))
      if (e.type === "delta") break;
    expect(ends).toEqual([undefined, "cancelled"]);
    await until(() => r.fleet.abandoned[0] === 1);
    expect(r.fleet.open(0)).toBe(0);
    expectIdle(r);
  });
});

describe("before the first token", () => {
  it("a 503 is retried on another replica: the first is suspected and its failure counted, the retry reported", async () => {
    const r = await rig(2);
    r.answer(0, status(503, "loading"));
    r.answer(1, streamOf(["ok"]));
    const ends: (string | undefined)[] = [];
    const span = { attempt: () => ({ headers: {}, end: (f?: string) => ends.push(f) }), end() {} };
    const { events, error, trace } = await run(r, chat({ span }));
    expect(error).toBeUndefined();
    expect(events.map((e) => e.type)).toEqual(["start", "delta", "finish"]);
    expect(trace).toMatchObject({ replica: r.replicas[1]?.id, attempts: 2 });
    expect(r.calls.retried).toEqual([["m", "unavailable"]]);
    expect(r.calls.suspect).toEqual([r.replicas[0]?.id]);
    expect(r.calls.failures).toEqual([`${r.replicas[0]?.id} unavailable`]);
    expect(r.calls.sent).toEqual([r.replicas[0]?.id, r.replicas[1]?.id]);
    expect(r.replicas[0]?.consecutiveFailures).toBe(1);
    expect(r.replicas[0]?.healthy).toBeUndefined(); // suspected, not judged: the scraper reads its /health
    expect(ends).toEqual(["unavailable", undefined]);
    expectIdle(r);
  });

  it("a refused connection marks the replica unhealthy and is retried elsewhere", async () => {
    const r = await rig(2);
    await r.fleet.stop(r.fleet.urls.indexOf(r.replicas[0]?.url ?? ""));
    r.answer(1, streamOf(["ok"]));
    const { error, trace } = await run(r);
    expect(error).toBeUndefined();
    expect(trace.attempts).toBe(2);
    expect(r.replicas[0]?.healthy).toBe(false);
    expect(r.replicas[0]?.consecutiveFailures).toBe(1);
    expect(r.calls.suspect).toEqual([r.replicas[0]?.id]);
    expect(r.calls.retried).toEqual([["m", "connect"]]);
    expectIdle(r);
  });

  it("a 429 is retried elsewhere without blaming the replica", async () => {
    const r = await rig(2);
    r.answer(0, status(429, "busy"));
    r.answer(1, streamOf(["ok"]));
    const { error } = await run(r);
    expect(error).toBeUndefined();
    expect(r.calls.retried).toEqual([["m", "overloaded"]]);
    expect(r.calls.suspect).toEqual([]);
    expect(r.replicas[0]?.consecutiveFailures).toBe(0);
    expect(r.replicas[0]?.healthy).toBeUndefined();
  });

  it("a request the replica rejects (400) is not retried and not held against it", async () => {
    const r = await rig(2);
    r.answer(0, status(400, "bad logprobs"));
    r.answer(1, streamOf(["ok"]));
    const { error } = await run(r);
    expect(error?.code).toBe(Code.InvalidArgument);
    expect(r.fleet.seen).toHaveLength(1);
    expect(r.replicas[0]?.consecutiveFailures).toBe(0);
    expect(r.calls.retried).toEqual([]);
    expectIdle(r);
  });

  it("the last failure is what the client sees once every replica failed, with the replica's retry-after", async () => {
    const r = await rig(2);
    r.answer(0, status(429, "busy", { "retry-after": "7" }));
    r.answer(1, status(429, "busy", { "retry-after": "7" }));
    const { error, trace } = await run(r);
    expect(error?.code).toBe(Code.ResourceExhausted);
    expect(reasonOf(error)).toBe(ErrorReason.OVERLOADED);
    expect(retryAfterOf(error)).toBe(7);
    expect(trace.attempts).toBe(2);
    expectIdle(r);
  });

  it("stops at maxAttempts, and ejects a replica at its consecutive-failure threshold", async () => {
    const r = await rig(3, {
      retry: { maxAttempts: 2 },
      ejection: { consecutiveFailures: 1, baseMs: 60_000 },
    });
    for (const i of [0, 1, 2]) r.answer(i, status(503));
    const before = performance.now();
    const { error, trace } = await run(r);
    expect(error?.code).toBe(Code.Unavailable);
    expect(reasonOf(error)).toBe(ErrorReason.NO_HEALTHY_REPLICA);
    expect(trace.attempts).toBe(2);
    expect(r.fleet.seen).toHaveLength(2);
    expect(r.calls.retried).toHaveLength(1);
    // Both ejected (the third stays eligible, so neither was the last one).
    expect(r.calls.ejected).toHaveLength(2);
    const ejected = r.replicas.filter((rep) => rep.ejectedUntil >= before + 60_000);
    expect(ejected.map((rep) => rep.id).sort()).toEqual([...r.calls.ejected].sort());
    expectIdle(r);
  });

  it("retries only within the retry budget", async () => {
    const r = await rig(2, { retry: { budgetRatio: 0, minRetries: 0 } });
    r.answer(0, status(503));
    r.answer(1, streamOf(["ok"]));
    const { error } = await run(r);
    expect(error?.code).toBe(Code.Unavailable);
    expect(r.fleet.seen).toHaveLength(1);
    expect(r.calls.retried).toEqual([]);
  });

  it("holds one retry slot at a time, released when the request ends", async () => {
    const r = await rig(3, { retry: { budgetRatio: 0, minRetries: 1 } });
    // The first two requests fail, wherever they go; the third is held until released.
    let release: () => void = () => {};
    let n = 0;
    const answer: Answer = (req, res) => {
      if (++n <= 2) return status(503)(req, res);
      res.writeHead(200, { "content-type": "text/event-stream" });
      release = () => res.end(sse(chunk("a"), finishChunk("stop"), "[DONE]"));
    };
    for (const i of [0, 1, 2]) r.answer(i, answer);
    const done = run(r);
    await until(() => r.fleet.seen.length === 3);
    // Two retries taken one after the other with a budget of one: the first was given back for the second.
    expect(r.calls.retried).toHaveLength(2);
    expect(r.deps.retryBudget.tryAcquire()).toBeUndefined(); // the second is held while the request runs
    release();
    expect((await done).error).toBeUndefined();
    const after = r.deps.retryBudget.tryAcquire();
    expect(after).toBeDefined();
    after?.();
  });

  it("with no replica left to try, says so: no healthy replica when none was tried", async () => {
    const r = await rig(1);
    (r.replicas[0] as Replica).ready = false;
    // A pinned version is taken as it is: the relay is the one to find it has no replica.
    const { error } = await run(r, chat({ version: "v1" }));
    expect(error?.code).toBe(Code.Unavailable);
    expect(reasonOf(error)).toBe(ErrorReason.NO_HEALTHY_REPLICA);
    expect(error?.rawMessage).toBe('no replica of model "m" is available');
    expect(r.fleet.seen).toHaveLength(0);
    expect(r.calls.sent).toEqual([]);
  });

  it("a first-token timeout is retried on another replica, and the silent request is closed", async () => {
    const r = await rig(2, { timeouts: { firstTokenMs: 150 } });
    r.answer(0, silence);
    r.answer(1, streamOf(["ok"]));
    const { error, trace } = await run(r);
    expect(error).toBeUndefined();
    expect(trace.attempts).toBe(2);
    expect(r.calls.retried).toEqual([["m", "first-token-timeout"]]);
    expect(r.calls.suspect).toEqual([]);
    expect(r.replicas[0]?.consecutiveFailures).toBe(1);
    await until(() => r.fleet.abandoned.reduce((a, b) => a + b, 0) === 1);
    expectIdle(r);
  });

  it("a first-token timeout on the only replica is the client's UPSTREAM_TIMEOUT", async () => {
    const r = await rig(1, { timeouts: { firstTokenMs: 100 } });
    r.answer(0, silence);
    const { error } = await run(r);
    expect(error?.code).toBe(Code.Unavailable);
    expect(reasonOf(error)).toBe(ErrorReason.UPSTREAM_TIMEOUT);
  });

  it("a lost LoRA adapter is forgotten on its replica and tried elsewhere, without blaming the replica", async () => {
    const r = await rig(2, { ejection: { consecutiveFailures: 1 } }, []);
    for (const rep of r.replicas) (rep as Replica).adapters = new Set(["sql", "chat"]);
    r.answer(0, status(404, "The model `sql` does not exist."));
    r.answer(1, streamOf(["ok"]));
    const { error } = await run(r, chat({ adapter: "sql" }));
    expect(error).toBeUndefined();
    expect([...(r.replicas[0]?.adapters ?? [])]).toEqual(["chat"]);
    expect([...(r.replicas[1]?.adapters ?? [])]).toEqual(["sql", "chat"]);
    expect(r.replicas[0]?.consecutiveFailures).toBe(0);
    expect(r.calls.ejected).toEqual([]);
    expect(r.calls.retried).toEqual([["m", "not-found"]]);
  });

  it("another failure of a request for an adapter is the replica's, and the adapter stays", async () => {
    const r = await rig(2);
    for (const rep of r.replicas) (rep as Replica).adapters = new Set(["sql"]);
    r.answer(0, status(503));
    r.answer(1, streamOf(["ok"]));
    const { error } = await run(r, chat({ adapter: "sql" }));
    expect(error).toBeUndefined();
    expect(r.replicas[0]?.consecutiveFailures).toBe(1);
    expect([...(r.replicas[0]?.adapters ?? [])]).toEqual(["sql"]);
  });

  it("a replica that does not serve its own model (404 without an adapter) is held against it", async () => {
    const r = await rig(2);
    r.answer(0, status(404, "The model `m-served` does not exist."));
    r.answer(1, streamOf(["ok"]));
    const { error } = await run(r);
    expect(error).toBeUndefined();
    expect(r.replicas[0]?.consecutiveFailures).toBe(1);
  });
});

describe("after the first token", () => {
  it("vLLM's in-band error ends the stream with UPSTREAM_FAILED after the partial text, not retried, replica not suspected", async () => {
    const r = await rig(2);
    r.answer(0, (_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.end(sse(chunk("par"), { error: { message: "engine died", code: 500 } }));
    });
    r.answer(1, streamOf(["ok"]));
    const ends: (string | undefined)[] = [];
    const span = { attempt: () => ({ headers: {}, end: (f?: string) => ends.push(f) }), end() {} };
    const { events, error } = await run(r, chat({ span }));
    expect(events).toMatchObject([{ type: "start" }, { type: "delta", text: "par" }]);
    expect(reasonOf(error)).toBe(ErrorReason.UPSTREAM_FAILED);
    expect(r.fleet.seen).toHaveLength(1);
    expect(r.calls.suspect).toEqual([]);
    expect(r.calls.retried).toEqual([]);
    expect(r.replicas[0]?.consecutiveFailures).toBe(1);
    expect(ends).toEqual(["broken-stream"]);
    expectIdle(r);
  });

  it("an inter-token timeout ends the stream, closes the upstream request and is held against the replica", async () => {
    const r = await rig(1, { timeouts: { interTokenMs: 150 } });
    r.answer(0, (_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.write(sse(chunk("a")));
    });
    const began = performance.now();
    const { events, error } = await run(r);
    const took = performance.now() - began;
    expect(events.map((e) => e.type)).toEqual(["start", "delta"]);
    expect(reasonOf(error)).toBe(ErrorReason.UPSTREAM_TIMEOUT);
    expect(took).toBeGreaterThanOrEqual(140);
    expect(r.replicas[0]?.consecutiveFailures).toBe(1);
    await until(() => r.fleet.abandoned[0] === 1);
    expectIdle(r);
  });

  it("the inter-token limit counts only the wait on the replica: a consumer slower than it is not a replica failure", async () => {
    const r = await rig(1, { timeouts: { interTokenMs: 120 } });
    r.answer(0, (_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.write(sse(chunk("a"), chunk("b")));
      // The rest arrives within the limit of each wait, but long after the stream began.
      setTimeout(() => res.write(sse(chunk("c"))), 80);
      setTimeout(() => res.end(sse(finishChunk("stop"), "[DONE]")), 160);
    });
    const events: InferenceEvent[] = [];
    for await (const e of relay(chat(), r.model, r.deps, performance.now(), newTrace())) {
      events.push(e);
      // The consumer holds each event for longer than the idle limit.
      await new Promise((res) => setTimeout(res, 150));
    }
    expect(events.map((e) => e.type)).toEqual(["start", "delta", "delta", "delta", "finish"]);
  });

  it("a stream whose tokens keep coming within the limit is never cut, however long it lasts", async () => {
    // 12 tokens 40 ms apart: twice the limit in all, each gap far within it.
    const r = await rig(1, { timeouts: { interTokenMs: 250 } });
    r.answer(0, (_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      let n = 0;
      const tick = setInterval(() => {
        n++;
        if (n < 13) res.write(sse(chunk(String(n))));
        else {
          clearInterval(tick);
          res.end(sse(finishChunk("stop"), "[DONE]"));
        }
      }, 40);
    });
    const { error, events } = await run(r);
    expect(error).toBeUndefined();
    expect(events.filter((e) => e.type === "delta")).toHaveLength(12);
  });
});

describe("what the replica sends", () => {
  it("a malformed event is a protocol failure held against the replica, even after the finish chunk", async () => {
    const r = await rig(1);
    r.answer(0, (_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.end(`${sse(chunk("a"), finishChunk("stop"))}data: {not json\n\n`);
    });
    const { events, error } = await run(r);
    expect(events.map((e) => e.type)).toEqual(["start", "delta"]);
    expect(reasonOf(error)).toBe(ErrorReason.UPSTREAM_FAILED);
    expect(r.replicas[0]?.consecutiveFailures).toBe(1);
  });

  it("relays a token's extras (logprobs, tool-call deltas) with it", async () => {
    const r = await rig(1);
    const logprobs = { content: [{ token: "a", logprob: -0.5 }] };
    r.answer(0, (_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.end(
        sse({ choices: [{ index: 0, delta: { content: "a" }, logprobs }] }, finishChunk("stop"), "[DONE]"),
      );
    });
    const { events } = await run(r);
    expect(events[1]).toEqual({ type: "delta", text: "a", tokenCount: 1, extras: { logprobs } });
  });

  it("the first token is the first text, not a usage-only chunk before it", async () => {
    const r = await rig(1);
    let release: () => void = () => {};
    r.answer(0, (_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.write(sse({ choices: [], usage: { prompt_tokens: 5, completion_tokens: 0 } }));
      release = () => res.end(sse(chunk("a"), finishChunk("stop"), "[DONE]"));
    });
    const gen = relay(chat(), r.model, r.deps, performance.now(), newTrace());
    const first = gen.next();
    await until(() => r.seenBy(0).length === 1);
    await new Promise((res) => setTimeout(res, 100));
    // Still prefilling: the usage chunk is no token.
    expect(r.replicas[0]?.prefillTokens).toBeGreaterThan(0);
    release();
    const start = (await first).value as Extract<InferenceEvent, { type: "start" }>;
    expect(start.timing?.upstreamMs).toBeGreaterThanOrEqual(90);
    for await (const _ of { [Symbol.asyncIterator]: () => gen }) {
    }
  });

  it("the inter-token limit runs from the last token: a replica that stalls after one is cut one limit after it", async () => {
    // Tokens at 0 and ~200 ms, then silence: cut at ~200 + 300 ms, not at 300 (the first check) nor later.
    const r = await rig(1, { timeouts: { interTokenMs: 300 } });
    r.answer(0, (_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.write(sse(chunk("a")));
      setTimeout(() => res.write(sse(chunk("b"))), 200);
    });
    const began = performance.now();
    const { events, error } = await run(r);
    const took = performance.now() - began;
    expect(events.map((e) => e.type)).toEqual(["start", "delta", "delta"]);
    expect(reasonOf(error)).toBe(ErrorReason.UPSTREAM_TIMEOUT);
    expect(took).toBeGreaterThanOrEqual(480);
    expect(took).toBeLessThan(650);
  });

  it("the first-token timer stops at the first token: a stream that outlasts it is not cut", async () => {
    const r = await rig(1, { timeouts: { firstTokenMs: 150 } });
    r.answer(0, (_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.write(sse(chunk("a")));
      setTimeout(() => res.end(sse(chunk("b"), finishChunk("stop"), "[DONE]")), 400);
    });
    const { events, error } = await run(r);
    expect(error).toBeUndefined();
    expect(events.map((e) => e.type)).toEqual(["start", "delta", "delta", "finish"]);
  });

  it("a bug in the attempt (not a replica's failure) is thrown as it is, and the attempt's counts released", async () => {
    const r = await rig(2);
    r.answer(0, streamOf(["a"]));
    const bug = new TypeError("a bug");
    const span = {
      attempt: () => ({
        get headers(): Record<string, string> {
          throw bug;
        },
        end() {},
      }),
      end() {},
    };
    await expect(run(r, chat({ span }))).rejects.toBe(bug);
    expect(r.fleet.seen).toHaveLength(0);
    expect(r.calls.retried).toEqual([]);
    expectIdle(r);
  });
});

describe("routing input", () => {
  it("an adapter's prompt is hashed apart from the base model's (vLLM keeps their prefix caches apart), and the pick is committed", async () => {
    const r = await rig(1, {}, ["sql"]);
    r.answer(0, streamOf(["x"]));
    const inputs: unknown[] = [];
    const commits: unknown[][] = [];
    const router = r.deps.router;
    const recording: RelayDeps = {
      ...r.deps,
      router: {
        ...router,
        pickReplica: (m, v, input, exclude) => {
          inputs.push(input);
          return router.pickReplica(m, v, input, exclude);
        },
        commit: (replica, input) => {
          commits.push([replica.id, input]);
          router.commit(replica, input);
        },
      },
    };
    // Long enough for several prefix blocks.
    const messages = [{ role: "user" as const, content: "a shared system prompt. ".repeat(40) }];
    const text = prefixTextOf(chat({ messages }));
    for (const adapter of [undefined, "sql"]) {
      const req = chat(adapter === undefined ? { messages } : { messages, adapter });
      for await (const _ of relay(req, r.model, recording, performance.now(), newTrace())) {
      }
    }
    expect(inputs).toMatchObject([
      { prefixHashes: router.hashPrompt(text), adapter: undefined, maxInFlight: 128, pinnedVersion: "" },
      { prefixHashes: router.hashPrompt(`sql\u0000${text}`), adapter: "sql" },
    ]);
    expect(router.hashPrompt(text).length).toBeGreaterThan(1);
    expect(router.hashPrompt(text)[0]).not.toEqual(router.hashPrompt(`sql\u0000${text}`)[0]);
    expect(commits).toEqual([
      [r.replicas[0]?.id, inputs[0]],
      [r.replicas[0]?.id, inputs[1]],
    ]);
  });

  it("works without any of its optional hooks", async () => {
    const r = await rig(3, { ejection: { consecutiveFailures: 1 }, limits: { maxEmbeddingBytes: 64 } });
    const { onRouted, onSend, onSuspect, onRetry, onEjected, onUpstreamFailure, embeddingSizes, ...bare } =
      r.deps;
    r.answer(0, status(503));
    r.answer(2, streamOf(["ok"]));
    r.answer(1, streamOf(["ok"]));
    const out: InferenceEvent[] = [];
    for await (const e of relay(chat(), r.model, bare, performance.now(), newTrace())) out.push(e);
    expect(out.at(-1)?.type).toBe("finish");
    expect(r.replicas[0]?.ejectedUntil).toBeGreaterThan(0);
    // Embeddings: a size is learned nowhere, and an answer too large still fails cleanly.
    const { messages: _, ...base } = chat();
    const embed = { ...base, embed: { inputs: ["x"] } } as InferenceRequest;
    r.answer(1, (_req, res) => {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(
        JSON.stringify({ data: [{ index: 0, embedding: Array(8).fill(0.5) }], usage: { prompt_tokens: 1 } }),
      );
    });
    r.answer(2, (_req, res) => {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(
        JSON.stringify({ data: [{ index: 0, embedding: Array(32).fill(0.5) }], usage: { prompt_tokens: 1 } }),
      );
    });
    const results: string[] = [];
    for (let i = 0; i < 2; i++) {
      try {
        for await (const e of relay(embed, r.model, bare, performance.now(), newTrace()))
          if (e.type === "finish") results.push("ok");
      } catch (err) {
        results.push(err instanceof ConnectError ? Code[err.code] : String(err));
      }
    }
    expect(results.sort()).toEqual(["InvalidArgument", "ok"]);
    expect(embeddingAnswerTooLarge(embed, "m", bare)).toBe(false);
  });
});

describe("the client leaving", () => {
  it("before the relay starts: nothing is sent", async () => {
    const r = await rig(1);
    const client = new AbortController();
    const left = new ConnectError("gone", Code.Canceled);
    client.abort(left);
    expect((await run(r, chat({ signal: client.signal }))).error).toBe(left);
    expect(r.fleet.seen).toHaveLength(0);
  });

  it("while the replica prefills: the upstream request is closed at once, no retry, nobody blamed", async () => {
    const r = await rig(2, { timeouts: { firstTokenMs: 60_000 } });
    r.answer(0, silence);
    const client = new AbortController();
    const left = new ConnectError("gone", Code.Canceled);
    const outcome = run(r, chat({ signal: client.signal }));
    await until(() => r.fleet.seen.length === 1);
    client.abort(left);
    expect((await outcome).error).toBe(left);
    await until(() => r.fleet.abandoned.reduce((a, b) => a + b, 0) === 1);
    expect(r.fleet.seen).toHaveLength(1);
    expect(r.calls.retried).toEqual([]);
    expect(r.calls.failures).toEqual([]);
    expect(r.replicas[0]?.consecutiveFailures).toBe(0);
    expectIdle(r);
  });

  it("mid-stream: the upstream request is closed at once and the replica is not blamed", async () => {
    const r = await rig(1, { timeouts: { interTokenMs: 60_000 } });
    r.answer(0, (_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.write(sse(chunk("a")));
    });
    const client = new AbortController();
    const left = new ConnectError("gone", Code.Canceled);
    const events: InferenceEvent[] = [];
    const outcome = (async () => {
      for await (const e of relay(
        chat({ signal: client.signal }),
        r.model,
        r.deps,
        performance.now(),
        newTrace(),
      )) {
        events.push(e);
        if (e.type === "delta") client.abort(left);
      }
    })().catch((e: unknown) => e);
    expect(await outcome).toBe(left);
    await until(() => r.fleet.abandoned[0] === 1);
    expect(r.replicas[0]?.consecutiveFailures).toBe(0);
    expect(r.calls.failures).toEqual([]);
    expectIdle(r);
  });
});

describe("embeddings", () => {
  const vectors = (n: number, size: number) =>
    Array.from({ length: n }, (_, i) => ({
      object: "embedding",
      index: i,
      embedding: Buffer.from(new Float32Array(size).fill(i).buffer).toString("base64"),
    }));
  const answerWith =
    (n: number, size: number, delayMs = 0): Answer =>
    (_req, res) =>
      setTimeout(() => {
        res.writeHead(200, { "content-type": "application/json" });
        res.end(JSON.stringify({ object: "list", data: vectors(n, size), usage: { prompt_tokens: 11 } }));
      }, delayMs);
  const embed = (inputs: number, over: Partial<InferenceRequest> = {}) => {
    const { messages: _, ...base } = chat();
    return {
      ...base,
      embed: { inputs: Array.from({ length: inputs }, (_, i) => `text ${i}`) },
      ...over,
    } as InferenceRequest;
  };

  it("yields the vectors in slices of 64 after a start with the answer's timing, and learns the model's vector size", async () => {
    const r = await rig(1);
    r.answer(0, answerWith(130, 8, 50));
    const acceptedAt = performance.now() - 3000;
    (r.replicas[0] as Replica).consecutiveFailures = 2;
    const events: InferenceEvent[] = [];
    const trace = newTrace();
    for await (const e of relay(embed(130), r.model, r.deps, acceptedAt, trace)) {
      events.push(e);
      // The replica has answered: nothing of it is pending prefill while the consumer holds the vectors.
      expect(r.replicas[0]?.prefillTokens).toBe(0);
    }
    expect(r.replicas[0]?.consecutiveFailures).toBe(0);
    expect(r.seenBy(0)[0]?.path).toBe("/v1/embeddings");
    expect(r.seenBy(0)[0]?.body).toMatchObject({ model: "m-served", input: embed(130).embed?.inputs });
    expect(events.map((e) => (e.type === "embeddings" ? e.vectors.length : e.type))).toEqual([
      "start",
      64,
      64,
      2,
      "finish",
    ]);
    const all = events.flatMap((e) => (e.type === "embeddings" ? [...e.vectors] : []));
    expect(all.map((v) => v[0])).toEqual(Array.from({ length: 130 }, (_, i) => i));
    const start = events[0] as Extract<InferenceEvent, { type: "start" }>;
    expect(start).toMatchObject({ requestId: "req-1", model: "m", version: "v1" });
    expect(start.timing?.gatewayMs).toBeGreaterThanOrEqual(3000);
    expect(start.timing?.gatewayMs).toBeLessThan(4000);
    expect(start.timing?.upstreamMs).toBeGreaterThanOrEqual(45);
    expect(start.timing?.upstreamMs).toBeLessThan(1000);
    const finish = events.at(-1) as Extract<InferenceEvent, { type: "finish" }>;
    expect(finish).toMatchObject({
      finishReason: "stop",
      matchedStop: "",
      usage: { promptTokens: 11, completionTokens: 0, cachedTokens: 0 },
    });
    expect(finish.timeToFirstTokenMs).toBeGreaterThanOrEqual(3045);
    expect(finish.timeToFirstTokenMs).toBeLessThan(4000);
    expect(finish.totalMs).toBeGreaterThanOrEqual(finish.timeToFirstTokenMs);
    expect(finish.totalMs).toBeLessThan(4000);
    expect(trace).toMatchObject({ replica: r.replicas[0]?.id, attempts: 1 });
    expect(r.deps.embeddingSizes?.get("m")?.size).toBe(8);
    expectIdle(r);
  });

  it("a whole number of slices is just that many events", async () => {
    const r = await rig(1);
    r.answer(0, answerWith(128, 2));
    const { events } = await run(r, embed(128));
    expect(events.map((e) => (e.type === "embeddings" ? e.vectors.length : e.type))).toEqual([
      "start",
      64,
      64,
      "finish",
    ]);
  });

  it("an answer too large for the dimensions asked for teaches nothing of the model's size", async () => {
    const r = await rig(1, { limits: { maxEmbeddingBytes: 1024 } });
    r.answer(0, answerWith(4, 128));
    const { error } = await run(r, embed(4, { embed: { inputs: ["a", "b", "c", "d"], dimensions: 128 } }));
    expect(reasonOf(error)).toBe(ErrorReason.INVALID_REQUEST);
    expect(r.deps.embeddingSizes?.has("m")).toBe(false);
  });

  it("a size asked for (dimensions) is not learned as the model's", async () => {
    const r = await rig(1);
    r.answer(0, answerWith(1, 4));
    const { error } = await run(r, embed(1, { embed: { inputs: ["x"], dimensions: 4 } }));
    expect(error).toBeUndefined();
    expect(r.deps.embeddingSizes?.has("m")).toBe(false);
  });

  it("an answer whose vectors pass the bound is refused, never retried nor held against the replica, and its size is learned", async () => {
    const r = await rig(2, {
      limits: { maxEmbeddingBytes: 1024 },
      ejection: { consecutiveFailures: 1 },
    });
    r.answer(0, answerWith(4, 128)); // 4 x 128 x 4 = 2 KiB of float32
    r.answer(1, answerWith(4, 128));
    const { error } = await run(r, embed(4));
    expect(reasonOf(error)).toBe(ErrorReason.INVALID_REQUEST);
    expect(r.fleet.seen).toHaveLength(1);
    expect(r.calls.ejected).toEqual([]);
    expect(r.replicas.map((rep) => rep.consecutiveFailures)).toEqual([0, 0]);
    expect(r.deps.embeddingSizes?.get("m")?.size).toBe(128);
    // Now known ahead: this many inputs would pass the bound, one would not.
    expect(embeddingAnswerTooLarge(embed(4), "m", r.deps)).toBe(true);
    expect(embeddingAnswerTooLarge(embed(2), "m", r.deps)).toBe(false);
    expectIdle(r);
  });

  it("a replica that answers too slowly is a first-token timeout, retried elsewhere", async () => {
    const r = await rig(2, { timeouts: { firstTokenMs: 100 } });
    r.answer(0, answerWith(1, 4, 2000));
    r.answer(1, answerWith(1, 4));
    const { error, trace } = await run(r, embed(1));
    expect(error).toBeUndefined();
    expect(trace.attempts).toBe(2);
    expect(r.calls.retried).toEqual([["m", "first-token-timeout"]]);
    await until(() => r.fleet.abandoned.reduce((a, b) => a + b, 0) === 1);
    expectIdle(r);
  });

  it("a client leaving while the replica embeds closes its request, and the client's reason is what ends the relay", async () => {
    const r = await rig(1);
    r.answer(0, silence);
    const client = new AbortController();
    const left = new ConnectError("gone", Code.Canceled);
    const outcome = run(r, embed(1, { signal: client.signal }));
    await until(() => r.fleet.seen.length === 1);
    client.abort(left);
    expect((await outcome).error).toBe(left);
    await until(() => r.fleet.abandoned[0] === 1);
    expect(r.calls.failures).toEqual([]);
    expectIdle(r);
  });

  it("embeddingAnswerTooLarge: by dimensions, by the size learned (for 10 minutes), by the surface's own bound", () => {
    const config = parseGatewayConfig({
      limits: { maxEmbeddingBytes: 4096 },
      models: [{ name: "m", versions: [{ name: "v1", replicas: ["http://127.0.0.1:1"] }] }],
    });
    let t = 1_000_000;
    const deps = {
      config,
      now: () => t,
      embeddingSizes: new Map<string, { size: number; learnedAt: number }>(),
    } as unknown as RelayDeps;
    const req = (inputs: number, over: Record<string, unknown> = {}) =>
      ({
        embed: { inputs: Array.from({ length: inputs }, () => "x"), ...over },
      }) as unknown as InferenceRequest;
    expect(embeddingAnswerTooLarge({} as InferenceRequest, "m", deps)).toBe(false);
    // Nothing known: not refused ahead.
    expect(embeddingAnswerTooLarge(req(1000), "m", deps)).toBe(false);
    // dimensions: 4 inputs x 256 x 4 bytes = 4096, at the bound; one more input passes it.
    expect(embeddingAnswerTooLarge(req(4, { dimensions: 256 }), "m", deps)).toBe(false);
    expect(embeddingAnswerTooLarge(req(5, { dimensions: 256 }), "m", deps)).toBe(true);
    // The surface's own, smaller bound.
    expect(embeddingAnswerTooLarge(req(4, { dimensions: 256, maxAnswerBytes: 4095 }), "m", deps)).toBe(true);
    expect(embeddingAnswerTooLarge(req(4, { dimensions: 256, maxAnswerBytes: 8192 }), "m", deps)).toBe(false);
    // Learned: trusted for 10 minutes, then forgotten.
    deps.embeddingSizes?.set("m", { size: 256, learnedAt: t });
    expect(embeddingAnswerTooLarge(req(5), "m", deps)).toBe(true);
    expect(embeddingAnswerTooLarge(req(5), "other", deps)).toBe(false);
    t += 10 * 60_000 - 1;
    expect(embeddingAnswerTooLarge(req(5), "m", deps)).toBe(true);
    t += 1;
    expect(embeddingAnswerTooLarge(req(5), "m", deps)).toBe(false);
    // Without a map of learned sizes, only dimensions tell.
    const bare = { config, now: () => t } as unknown as RelayDeps;
    expect(embeddingAnswerTooLarge(req(5), "m", bare)).toBe(false);
    expect(embeddingAnswerTooLarge(req(5, { dimensions: 256 }), "m", bare)).toBe(true);
  });
});
