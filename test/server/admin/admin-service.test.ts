/**
 * The admin API on its own port, against a gateway in front of simulated replicas: authentication, live
 * state, traffic splits that real requests follow, version pins, drain and undrain, routing policies, the
 * watch stream, and `buf curl` with the admin token.
 */
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { type Client, Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  AdminService,
  ChangeType,
  ReplicaState,
  RoutingAlgorithm,
} from "../../../gen/es/kinfer/admin/v1/admin_pb.js";
import { InferenceService } from "../../../gen/es/kinfer/inference/v1/inference_pb.js";
import type { SimServer } from "../../../sim/http/sim-server.js";
import { type Harness, startHarness } from "../../helpers/gateway-harness.js";

const TOKEN = "admin-token-for-tests-0123456789";
let h: Harness;

beforeAll(async () => {
  h = await startHarness({
    models: { m: { stable: 2, canary: 1 } },
    weights: { m: { stable: 1, canary: 0 } },
    config: { admin: { host: "127.0.0.1", port: 0, token: TOKEN }, routing: { algorithm: "round-robin" } },
  });
});
afterAll(() => h.close());

const admin = (token = TOKEN) =>
  createClient(
    AdminService,
    createConnectTransport({
      baseUrl: h.gateway.adminUrl as string,
      httpVersion: "2",
      interceptors: [
        (next) => (req) => {
          if (token !== "") req.header.set("authorization", `Bearer ${token}`);
          return next(req);
        },
      ],
    }),
  );

/** One client (one HTTP/2 connection) for every request of the tests. */
let inference: Client<typeof InferenceService> | undefined;

async function versionOf(headers: Record<string, string> = {}): Promise<string> {
  inference ??= createClient(InferenceService, createConnectTransport({ baseUrl: h.url, httpVersion: "2" }));
  const client = inference;
  for await (const res of client.generate(
    { model: "m", prompt: "hi", sampling: { maxTokens: 1 } },
    { headers },
  )) {
    if (res.event.case === "start") return res.event.value.version;
  }
  throw new Error("no start event");
}

async function served(replica: SimServer): Promise<number> {
  const line = (await replica.metricsText())
    .split("\n")
    .find((l) => l.startsWith("vllm:prompt_tokens_total{"));
  return Number(line?.split(" ").at(-1) ?? 0);
}

describe("authentication", () => {
  it.each([
    ["no token", ""],
    ["a wrong token", "not-the-admin-token-0000"],
  ])("%s: UNAUTHENTICATED", async (_, token) => {
    await expect(admin(token).listModels({})).rejects.toMatchObject({ code: Code.Unauthenticated });
  });

  it("the admin API is not on the public port", async () => {
    const publicAdmin = createClient(
      AdminService,
      createConnectTransport({ baseUrl: h.url, httpVersion: "2" }),
    );
    await expect(publicAdmin.listModels({})).rejects.toMatchObject({ code: Code.Unimplemented });
  });
});

describe("state and changes", () => {
  it("lists models with versions, weights, replicas and their live state", async () => {
    await h.gateway.scrapeNow();
    const { models } = await admin().listModels({});
    expect(models).toHaveLength(1);
    const m = models[0];
    expect(m?.versions.map((v) => [v.name, v.weight, v.replicas.length])).toEqual([
      ["canary", 0, 1],
      ["stable", 1, 2],
    ]);
    expect(m?.versions[1]?.replicas[0]).toMatchObject({ state: ReplicaState.READY, source: "static" });
    expect(m?.versions[1]?.replicas[0]?.signals?.scrapedAt).toBeDefined();
    expect(m?.routingPolicy?.algorithm).toBe(RoutingAlgorithm.ROUND_ROBIN);
  });

  it("validates a traffic split and applies it: requests follow the weights, a pin always wins", async () => {
    const c = admin();
    for (const weights of [
      [{ version: "nope", weight: 1 }],
      [{ version: "stable", weight: 0 }],
      [
        { version: "stable", weight: 5 },
        { version: "stable", weight: 5 },
      ],
      [{ version: "stable", weight: 20_000 }],
    ]) {
      await expect(c.setTrafficSplit({ model: "m", weights })).rejects.toMatchObject({
        code: Code.InvalidArgument,
      });
    }
    const res = await c.setTrafficSplit({
      model: "m",
      weights: [
        { version: "stable", weight: 90 },
        { version: "canary", weight: 10 },
      ],
    });
    expect(res.model?.versions.map((v) => v.weight)).toEqual([10, 90]);
    // 10,000 requests, 64 at a time: the canary's share is within 3 points of 10%.
    const counts = { stable: 0, canary: 0 } as Record<string, number>;
    let next = 0;
    const worker = async () => {
      while (next < 10_000) {
        next++;
        const v = await versionOf();
        counts[v] = (counts[v] ?? 0) + 1;
      }
    };
    await Promise.all(Array.from({ length: 64 }, worker));
    expect((counts.stable ?? 0) + (counts.canary ?? 0)).toBe(10_000);
    expect(Math.abs((counts.canary ?? 0) / 10_000 - 0.1)).toBeLessThanOrEqual(0.03);
    for (let i = 0; i < 50; i++) expect(await versionOf({ "x-kinfer-version": "canary" })).toBe("canary");
  }, 120_000);

  it("drains a replica: no new requests reach it; undrained, it gets them again", async () => {
    const c = admin();
    await c.setTrafficSplit({ model: "m", weights: [{ version: "stable", weight: 1 }] });
    const [a, b] = h.replicas.get("m/stable") as [SimServer, SimServer];
    const drained = await c.drainReplica({ replicaId: a.url });
    expect(drained.replica?.state).toBe(ReplicaState.DRAINING);
    const before = await served(a);
    for (let i = 0; i < 20; i++) await versionOf();
    expect(await served(a)).toBe(before);
    expect(await served(b)).toBeGreaterThan(0);
    await c.undrainReplica({ replicaId: a.url });
    for (let i = 0; i < 20; i++) await versionOf();
    expect(await served(a)).toBeGreaterThan(before);
    await expect(c.drainReplica({ replicaId: "http://nowhere:1" })).rejects.toMatchObject({
      code: Code.NotFound,
    });
  });

  it("gets and sets the routing policy, rejecting invalid ones", async () => {
    const c = admin();
    const set = await c.setRoutingPolicy({
      model: "m",
      policy: { algorithm: RoutingAlgorithm.LEAST_OUTSTANDING, kvCacheThreshold: 0.5, sessionAffinity: true },
    });
    expect(set.policy).toMatchObject({
      algorithm: RoutingAlgorithm.LEAST_OUTSTANDING,
      kvCacheThreshold: 0.5,
    });
    expect((await c.getRoutingPolicy({ model: "m" })).policy?.algorithm).toBe(
      RoutingAlgorithm.LEAST_OUTSTANDING,
    );
    await expect(c.setRoutingPolicy({ model: "m", policy: { kvCacheThreshold: 3 } })).rejects.toMatchObject({
      code: Code.InvalidArgument,
    });
    await expect(c.getRoutingPolicy({ model: "x" })).rejects.toMatchObject({ code: Code.NotFound });
  });

  it("watches state: a snapshot first, then an update when a replica is drained", async () => {
    const c = admin();
    const control = new AbortController();
    const stream = c.watchState(
      { models: ["m"], minInterval: { seconds: 0n, nanos: 100_000_000 } },
      { signal: control.signal },
    );
    const it = stream[Symbol.asyncIterator]();
    const first = await it.next();
    expect(first.value?.type).toBe(ChangeType.SNAPSHOT);
    const [a] = h.replicas.get("m/stable") as [SimServer];
    await c.drainReplica({ replicaId: a.url });
    const stateOf = (u: typeof first) =>
      u.value?.model?.versions
        .find((v: { name: string }) => v.name === "stable")
        ?.replicas.find((r: { id: string }) => r.id === a.url)?.state;
    let update = await it.next();
    while (stateOf(update) !== ReplicaState.DRAINING) update = await it.next();
    expect(update.value?.type).toBe(ChangeType.UPDATED);
    control.abort();
    await c.undrainReplica({ replicaId: a.url });
  });

  it("answers buf curl with the admin token (reflection included)", async () => {
    const { stdout } = await promisify(execFile)(
      "npx",
      [
        "buf",
        "curl",
        "--http2-prior-knowledge",
        "-H",
        `Authorization: Bearer ${TOKEN}`,
        // Reflection on the admin port is authenticated too; buf curl sends -H headers only with the call.
        "--reflect-header",
        `Authorization: Bearer ${TOKEN}`,
        "-d",
        '{"model":"m"}',
        `${h.gateway.adminUrl}/kinfer.admin.v1.AdminService/GetRoutingPolicy`,
      ],
      { encoding: "utf8" },
    );
    expect(JSON.parse(stdout).policy.algorithm).toBe("ROUTING_ALGORITHM_LEAST_OUTSTANDING");
  });

  it("API keys without a keys file: FAILED_PRECONDITION (test/server/tenants/admission.test.ts has them)", async () => {
    const err = await admin()
      .listApiKeys({})
      .catch((e: unknown) => ConnectError.from(e));
    expect(err).toMatchObject({ code: Code.FailedPrecondition });
  });
});
