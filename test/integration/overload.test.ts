/**
 * Overload without collapse, through a live gateway with real clients: a saturated model holds its
 * requests in the gateway's queue and releases them as slots free (the replica never gets more than its
 * share); the queue is bounded (429 with retry-after when full, or when a request waited as long as it
 * may); a cancelled waiter leaves at once; critical requests go first and sheddable ones are evicted for
 * them; tenants sharing a saturated model are served fairly; a model with no replica holds requests until
 * one appears (scale from zero); and the queue is visible in /metrics and the admin API. After each, the
 * gateway is idle again.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { stringify } from "yaml";
import { AdminService } from "../../gen/es/kinfer/admin/v1/admin_pb.js";
import { parseGatewayConfig } from "../../server/config/gateway-config.js";
import { newKey } from "../../server/tenants/key-store.js";
import { type SimServer, startSimServer } from "../../sim/http/sim-server.js";
import { type Harness, startHarness } from "../helpers/gateway-harness.js";
import { expectIdle, waitFor } from "../helpers/idle.js";
import { postJson } from "../helpers/sse.js";

const TOKEN = "admin-token-for-overload-0123456";
const keys = {
  a: newKey({ tenant: "team-a" }),
  b: newKey({ tenant: "team-b" }),
  batch: newKey({ tenant: "batch", priority: "sheddable" }),
  ops: newKey({ tenant: "ops", priority: "critical" }),
};
let h: Harness;
let dir: string;
const extra: SimServer[] = [];

/** Models: each test its own, one replica that runs 2 sequences (2 slots), slow tokens (~50 a second). */
const FLOW = { maxInFlightPerReplica: 2, criticalReserve: 0, maxQueued: 4, maxWaitMs: 5000 };
beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "kinfer-overload-"));
  const keysFile = join(dir, "keys.yaml");
  writeFileSync(keysFile, stringify({ keys: Object.values(keys).map((k) => k.record) }));
  h = await startHarness({
    models: {
      hold: { stable: 1 },
      full: { stable: 1 },
      wait: { stable: 1 },
      prio: { stable: 1 },
      fair: { stable: 1 },
    },
    engine: { maxNumSeqs: 2, decodeBaseMs: 20, decodeMsPerSeq: 0 },
    modelConfig: {
      hold: { flow: FLOW },
      full: { flow: FLOW },
      wait: { flow: { ...FLOW, maxWaitMs: 300 } },
      prio: { flow: FLOW },
      fair: { flow: { ...FLOW, maxInFlightPerReplica: 1, maxQueued: 100 } },
    },
    config: { tenants: { keysFile }, admin: { host: "127.0.0.1", port: 0, token: TOKEN } },
  });
});
afterAll(async () => {
  await h.close();
  await Promise.all(extra.map((r) => r.close()));
  rmSync(dir, { recursive: true, force: true });
});

const chat = (
  model: string,
  key: { secret: string },
  maxTokens: number,
  headers: Record<string, string> = {},
  signal?: AbortSignal,
) =>
  postJson(
    `${h.url}/v1/chat/completions`,
    { model, max_tokens: maxTokens, messages: [{ role: "user", content: "Hi" }] },
    {
      headers: { authorization: `Bearer ${key.secret}`, ...headers },
      ...(signal !== undefined ? { signal } : {}),
    },
  );

const replicaOf = (model: string) => h.replicas.get(`${model}/stable`)?.[0] as SimServer;
const queued = (model: string) =>
  h.gateway.metrics.registry
    .getSingleMetric("kinfer_gateway_queue_length")
    ?.get()
    .then((m) =>
      m.values.filter((v) => v.labels.model === model).reduce((n, v) => n + v.value, 0),
    ) as Promise<number>;

describe("a saturated model", () => {
  it("holds requests in the gateway and releases them as slots free: the replica never runs more than its share", async () => {
    const replica = replicaOf("hold");
    let most = 0;
    const watch = setInterval(() => {
      const s = replica.engine.stats();
      most = Math.max(most, s.running + s.waiting);
    }, 2);
    const answers = await Promise.all(Array.from({ length: 6 }, () => chat("hold", keys.a, 10)));
    clearInterval(watch);
    expect(answers.map((r) => r.status)).toEqual([200, 200, 200, 200, 200, 200]);
    expect(most).toBeLessThanOrEqual(2);
    await expectIdle(h);
  });

  it("a full queue answers 429 with retry-after; the rest are served", async () => {
    const answers = await Promise.all(Array.from({ length: 10 }, () => chat("full", keys.a, 10)));
    const refused = answers.filter((r) => r.status === 429);
    expect(refused).toHaveLength(4); // 2 running + 4 waiting; 4 refused
    expect(refused[0]?.headers.get("retry-after")).toMatch(/^\d+$/);
    const bodies = await Promise.all(answers.map((r) => r.text()));
    expect(bodies.filter((b) => b.includes('"code":"overloaded"'))).toHaveLength(4);
    await expectIdle(h);
  });

  it("a request that waited as long as it may gets 429, and a cancelled one leaves the queue at once", async () => {
    const long = [chat("wait", keys.a, 100), chat("wait", keys.a, 100)];
    await waitFor(() => replicaOf("wait").engine.stats().running === 2, "both slots busy");
    const started = performance.now();
    const timedOut = await chat("wait", keys.a, 5);
    expect(timedOut.status).toBe(429);
    expect(performance.now() - started).toBeGreaterThan(250);
    const control = new AbortController();
    const cancelled = chat("wait", keys.a, 5, {}, control.signal).catch(() => undefined);
    await waitFor(() => h.gateway.activity().inFlight === 3, "the request to wait");
    expect(await queued("wait")).toBe(1);
    control.abort();
    await cancelled;
    await waitFor(() => h.gateway.activity().inFlight === 2, "the cancelled request to leave", 1000);
    expect(await queued("wait")).toBe(0);
    await Promise.all((await Promise.all(long)).map((r) => r.text()));
    await expectIdle(h);
  });
});

describe("criticality", () => {
  it("critical requests go first, and evict sheddable ones from a full queue", async () => {
    const busy = [chat("prio", keys.a, 30), chat("prio", keys.a, 30)];
    await waitFor(() => replicaOf("prio").engine.stats().running === 2, "both slots busy");
    const order: string[] = [];
    const tagged = (name: string, res: Promise<Response>) =>
      res.then(async (r) => {
        order.push(`${name}:${r.status}`);
        await r.text();
      });
    // The queue fills with one tenant's sheddable work and a standard request.
    const sheddable = { "x-kinfer-priority": "sheddable" };
    const waiting = [
      tagged("shed1", chat("prio", keys.a, 5, sheddable)),
      tagged("shed2", chat("prio", keys.a, 5, sheddable)),
      tagged("shed3", chat("prio", keys.a, 5, sheddable)),
    ];
    await waitFor(() => h.gateway.activity().inFlight === 5, "three waiters");
    waiting.push(tagged("standard", chat("prio", keys.a, 5)));
    await waitFor(() => h.gateway.activity().inFlight === 6, "four waiters");
    // A critical request (from a key allowed to claim it) on a full queue: the newest sheddable one makes way.
    waiting.push(tagged("critical", chat("prio", keys.ops, 5, { "x-kinfer-priority": "critical" })));
    await Promise.all([...waiting, ...busy.map((b) => b.then((r) => r.text()))]);
    expect(order[0]).toBe("shed3:429");
    const served = order.filter((o) => o.endsWith(":200")).map((o) => o.split(":")[0]);
    // Critical first; then, within the tenant, standard before sheddable.
    // (Two slots: the last two run together and may end in either order.)
    expect(served.slice(0, 2)).toEqual(["critical", "standard"]);
    expect(served.slice(2).sort()).toEqual(["shed1", "shed2"]);
    await expectIdle(h);
  });
});

describe("fairness", () => {
  it("a key's default criticality applies to its requests", async () => {
    const busy = [chat("prio", keys.a, 30), chat("prio", keys.a, 30)];
    await waitFor(() => replicaOf("prio").engine.stats().running === 2, "both slots busy");
    const shed = chat("prio", keys.batch, 5); // the batch key's requests are sheddable
    await waitFor(() => h.gateway.activity().inFlight === 3, "it to wait");
    const q =
      (await h.gateway.metrics.registry.getSingleMetric("kinfer_gateway_queue_length")?.get())?.values ?? [];
    expect(q.find((v) => v.labels.model === "prio" && v.labels.priority === "sheddable")?.value).toBe(1);
    await Promise.all([shed, ...busy].map((p) => p.then((r) => r.text())));
    await expectIdle(h);
  });

  it("a key's criticality is the most its requests may claim: a standard key's 'critical' waits as standard", async () => {
    const busy = [chat("prio", keys.a, 30), chat("prio", keys.a, 30)];
    await waitFor(() => replicaOf("prio").engine.stats().running === 2, "both slots busy");
    const claimed = chat("prio", keys.b, 5, { "x-kinfer-priority": "critical" });
    const lowered = chat("prio", keys.ops, 5, { "x-kinfer-priority": "sheddable" });
    await waitFor(() => h.gateway.activity().inFlight === 4, "both to wait");
    const q =
      (await h.gateway.metrics.registry.getSingleMetric("kinfer_gateway_queue_length")?.get())?.values ?? [];
    const waiting = (priority: string) =>
      q.find((v) => v.labels.model === "prio" && v.labels.priority === priority)?.value;
    expect([waiting("critical"), waiting("standard"), waiting("sheddable")]).toEqual([0, 1, 1]);
    await Promise.all([claimed, lowered, ...busy].map((p) => p.then((r) => r.text())));
    await expectIdle(h);
  });

  it("a tenant that floods the queue does not starve another: the other's requests go next", async () => {
    const starts: string[] = [];
    const first = async (tenant: string, key: { secret: string }) => {
      const r = await chat("fair", key, 4);
      starts.push(tenant);
      await r.text();
    };
    const flood = Array.from({ length: 8 }, () => first("a", keys.a));
    await waitFor(() => h.gateway.activity().inFlight === 8, "a's flood to arrive");
    const late = [first("b", keys.b), first("b", keys.b)];
    await Promise.all([...flood, ...late]);
    // One slot at a time: a's first request was running; b's two arrive behind seven of a's and are
    // interleaved with them (virtual token counters), not served after all of them.
    expect(starts.slice(0, 5).filter((t) => t === "b")).toHaveLength(2);
    const admin = createClient(
      AdminService,
      createConnectTransport({ baseUrl: h.gateway.adminUrl as string, httpVersion: "1.1" }),
    );
    const { queues } = await admin.listQueues(
      { model: "fair" },
      { headers: { authorization: `Bearer ${TOKEN}` } },
    );
    const share = new Map(queues[0]?.tenants.map((t) => [t.tenant, t.virtualTokens]));
    expect(share.get("team-a")).toBeGreaterThan(share.get("team-b") as number);
    await expectIdle(h);
  });
});

describe("scale from zero", () => {
  it("a model with no replica holds its requests until one is ready; with no activation timeout it answers 503", async () => {
    const base = (activationTimeoutMs: number) => ({
      name: "cold",
      maxContextTokens: 8192,
      flow: { activationTimeoutMs },
      versions: [{ name: "stable", replicas: [] as string[] }],
    });
    const configWith = (model: ReturnType<typeof base>) =>
      parseGatewayConfig({
        ...structuredClone(rawConfig()),
        models: [...rawConfig().models.filter((m) => m.name !== "cold"), model],
      });
    h.gateway.applyConfig(configWith(base(0)));
    expect((await chat("cold", keys.a, 4)).status).toBe(503);
    h.gateway.applyConfig(configWith(base(20_000)));
    const pending = chat("cold", keys.a, 4);
    await waitFor(() => h.gateway.activity().inFlight === 1, "the request to wait for a replica");
    expect(await queued("cold")).toBe(1);
    const replica = await startSimServer({ model: "cold" });
    extra.push(replica);
    const warm = base(20_000);
    warm.versions[0]?.replicas.push(replica.url);
    h.gateway.applyConfig(configWith(warm));
    await h.gateway.scrapeNow();
    const res = await pending;
    expect(res.status, await res.clone().text()).toBe(200);
    await expectIdle(h);
  });
});

/** The harness's config as plain data (models with their replica URLs), to change and apply again. */
function rawConfig() {
  return {
    logLevel: "silent",
    listen: { host: "127.0.0.1", port: 0 },
    scrape: { intervalMs: 50, timeoutMs: 500 },
    tenants: h.gateway.config().tenants,
    admin: h.gateway.config().admin,
    models: h.gateway.config().models.map((m) => structuredClone(m)),
  };
}
