/**
 * Flow control's rules in virtual time, with a model of fixed capacity: weighted fair shares between
 * tenants that stay backlogged (virtual token counters), the class order, the byte bound, and leaving
 * before the client's deadline. (test/integration/overload.test.ts runs the same through a gateway.)
 */
import { describe, expect, it } from "vitest";
import { routingPolicySchema } from "../../../server/config/gateway-config.js";
import { createFlowController, type FlowLimits, type FlowTicket } from "../../../server/flow/flow-control.js";
import { createReplica } from "../../../server/replicas/replica.js";
import type { Priority } from "../../../server/request/inference-request.js";
import type { ModelEntry } from "../../../server/routing/routing-table.js";
import { createVirtualClock } from "../../../sim/engine/clock.js";

function setup(limits: Partial<FlowLimits> = {}) {
  const clock = createVirtualClock();
  const shed: { reason: string; at: number }[] = [];
  const replica = createReplica("m", "v", "sim://0", "test");
  replica.healthy = true;
  const model: ModelEntry = {
    name: "m",
    maxContextTokens: 8192,
    adapters: [],
    discoverAdapters: false,
    policy: routingPolicySchema.parse({}),
    versions: [{ name: "v", weight: 1, servedModelName: "m", replicas: [replica] }],
  };
  const flow = createFlowController({
    now: () => clock.now(),
    setTimer: (at, fn) => clock.setTimer(at, fn),
    model: () => model,
    limits: () => ({
      maxInFlightPerReplica: 1,
      maxPrefillTokensPerReplica: 1e9,
      criticalReserve: 0,
      maxQueued: 1000,
      maxQueuedBytes: 1e9,
      maxWaitMs: 1e9,
      activationTimeoutMs: 0,
      ...limits,
    }),
    hooks: { shed: (_model, _criticality, reason) => shed.push({ reason, at: clock.now() }) },
  });
  const request = (
    tenant: string,
    opts: {
      weight?: number;
      criticality?: Priority;
      cost?: number;
      bytes?: number;
      deadlineAt?: number;
    } = {},
  ) =>
    flow.acquire({
      model,
      criticality: opts.criticality ?? "standard",
      tenant,
      weight: opts.weight ?? 1,
      cost: opts.cost ?? 100,
      bytes: opts.bytes ?? 10,
      deadlineAt: opts.deadlineAt,
      signal: new AbortController().signal,
    });
  return { clock, flow, request, shed };
}

/** Serves waiters one at a time, each taking 10 ms, and records whose turn each was. */
async function serveAll(
  s: ReturnType<typeof setup>,
  pending: { tenant: string; ticket: Promise<FlowTicket> | FlowTicket }[],
) {
  const served: string[] = [];
  for (const p of pending)
    Promise.resolve(p.ticket).then(
      (t) => {
        served.push(p.tenant);
        s.clock.setTimer(s.clock.now() + 10, () => t.release());
      },
      () => served.push(`${p.tenant}:refused`),
    );
  for (let i = 0; i < 10_000 && served.length < pending.length; i++) {
    await new Promise((r) => setImmediate(r));
    s.clock.run(s.clock.now() + 10);
  }
  return served;
}

describe("flow control", () => {
  it("equal weights: a tenant sending ten times as much gets an equal share while both wait", async () => {
    const s = setup();
    const pending = [
      ...Array.from({ length: 100 }, () => ({ tenant: "big", ticket: s.request("big") })),
      ...Array.from({ length: 10 }, () => ({ tenant: "small", ticket: s.request("small") })),
    ];
    const served = await serveAll(s, pending);
    // Of the first 20 served, the small tenant (10 requests) has half.
    expect(served.slice(0, 21).filter((t) => t === "small").length).toBeGreaterThanOrEqual(9);
  });

  it("weights 2:1 give service 2:1 while both are backlogged", async () => {
    const s = setup();
    const pending = [
      ...Array.from({ length: 60 }, () => ({ tenant: "two", ticket: s.request("two", { weight: 2 }) })),
      ...Array.from({ length: 60 }, () => ({ tenant: "one", ticket: s.request("one", { weight: 1 }) })),
    ];
    const first = (await serveAll(s, pending)).slice(0, 61);
    const two = first.filter((t) => t === "two").length;
    expect(two / (first.length - two)).toBeGreaterThan(1.7);
    expect(two / (first.length - two)).toBeLessThan(2.4);
  });

  it("serves critical, then standard, then sheddable", async () => {
    const s = setup();
    const pending = (["sheddable", "standard", "critical", "sheddable", "critical"] as Priority[]).map(
      (c, i) => ({
        tenant: `${c}${i}`,
        ticket: s.request(`${c}${i}`, { criticality: c }),
      }),
    );
    const served = await serveAll(s, pending);
    // The first went through at once (the model had a slot); the rest by class.
    expect(served.slice(1)).toEqual(["critical2", "critical4", "standard1", "sheddable3"]);
  });

  it("keeps a share of the bound for critical requests; others wait short of it", async () => {
    const s = setup({ maxInFlightPerReplica: 10, criticalReserve: 0.2 });
    for (let i = 0; i < 8; i++) expect(s.request("a")).not.toBeInstanceOf(Promise);
    expect(s.request("a")).toBeInstanceOf(Promise); // standard: waits at 8 of 10
    expect(s.request("a", { criticality: "critical" })).not.toBeInstanceOf(Promise);
    expect(s.request("a", { criticality: "critical" })).not.toBeInstanceOf(Promise);
    expect(s.request("a", { criticality: "critical" })).toBeInstanceOf(Promise); // the bound (10) is reached
  });

  it("bounds the bytes held by waiters", async () => {
    const s = setup({ maxQueuedBytes: 100 });
    s.request("a"); // takes the slot
    const ok = s.request("a", { bytes: 60 });
    expect(() => s.request("a", { bytes: 60 })).toThrow(/queue is full/);
    expect(ok).toBeInstanceOf(Promise);
  });

  it("leaves the queue just before the client's deadline, with RESOURCE_EXHAUSTED", async () => {
    const s = setup();
    s.request("a"); // takes the slot, never released
    const waiting = s.request("a", { deadlineAt: 1000 }) as Promise<FlowTicket>;
    const outcome = waiting.then(
      () => "served",
      (err: { code: number }) => `refused ${err.code}`,
    );
    s.clock.run(2000);
    expect(await outcome).toBe("refused 8"); // RESOURCE_EXHAUSTED
    expect(s.shed).toEqual([{ reason: "wait-timeout", at: 950 }]);
  });
});
