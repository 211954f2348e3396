/**
 * The control state in a local file, through two real gateway processes that name the same file (as two
 * `npm start` gateways on one machine would): a traffic split set on one is applied by the other within a
 * second; expected_state_version makes a stale change fail with ABORTED instead of overwriting; changes
 * made at the same moment through both gateways are all kept; a restarted gateway starts with the stored
 * state; a file broken by hand is reported and the state in force is kept.
 */
import { mkdtempSync, readFileSync, rmSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AdminService, ReplicaState } from "../../../gen/es/kinfer/admin/v1/admin_pb.js";
import { createFileControlStore } from "../../../server/control/file-control-store.js";
import { type SimServer, startSimServer } from "../../../sim/http/sim-server.js";
import { type GatewayProcess, startGatewayProcess } from "../../helpers/gateway-process.js";
import { waitFor } from "../../helpers/idle.js";

const TOKEN = "admin-token-for-control-state-0001";
let dir: string;
let stateFile: string;
let replicas: SimServer[];
const gateways: GatewayProcess[] = [];

const config = () => ({
  logLevel: "warn",
  admin: { host: "127.0.0.1", port: 0, token: TOKEN },
  control: { store: "file", file: stateFile },
  models: [
    {
      name: "m",
      versions: [
        { name: "stable", weight: 100, replicas: [replicas[0]?.url] },
        { name: "canary", weight: 0, replicas: [replicas[1]?.url] },
      ],
    },
  ],
});
const admin = (g: GatewayProcess) =>
  createClient(
    AdminService,
    createConnectTransport({
      baseUrl: g.adminUrl as string,
      httpVersion: "1.1",
      interceptors: [
        (next) => (req) => {
          req.header.set("authorization", `Bearer ${TOKEN}`);
          return next(req);
        },
      ],
    }),
  );
const weightsOn = async (g: GatewayProcess) =>
  Object.fromEntries(
    ((await admin(g).getModel({ model: "m" })).model?.versions ?? []).map((v) => [v.name, v.weight]),
  );

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "kinfer-control-"));
  stateFile = join(dir, "state", "control.yaml"); // its directory is created by the gateway
  replicas = await Promise.all([startSimServer({ model: "m" }), startSimServer({ model: "m" })]);
  gateways.push(await startGatewayProcess(config()), await startGatewayProcess(config()));
}, 60_000);

afterAll(async () => {
  await Promise.all(gateways.map((g) => g.stop()));
  await Promise.all(replicas.map((r) => r.close()));
  rmSync(dir, { recursive: true, force: true });
});

describe("control state in a file, shared by two gateways", () => {
  it("a split set on one gateway is applied by the other within a second", async () => {
    const [a, b] = gateways as [GatewayProcess, GatewayProcess];
    const set = await admin(a).setTrafficSplit({
      model: "m",
      weights: [
        { version: "stable", weight: 70 },
        { version: "canary", weight: 30 },
      ],
    });
    expect(set.model?.stateVersion).not.toBe("");
    const started = Date.now();
    await waitFor(async () => (await weightsOn(b)).canary === 30, "gateway b to apply the split", 1000);
    expect(Date.now() - started).toBeLessThan(1000);
    expect((await admin(b).getModel({ model: "m" })).model?.stateVersion).toBe(set.model?.stateVersion);
  });

  it("a change made over a stale version is refused with ABORTED, not applied", async () => {
    const [a, b] = gateways as [GatewayProcess, GatewayProcess];
    const read = (await admin(a).getModel({ model: "m" })).model?.stateVersion as string;
    await admin(b).setTrafficSplit({
      model: "m",
      weights: [{ version: "stable", weight: 100 }],
      expectedStateVersion: read,
    });
    await expect(
      admin(a).setTrafficSplit({
        model: "m",
        weights: [{ version: "canary", weight: 100 }],
        expectedStateVersion: read,
      }),
    ).rejects.toMatchObject({ code: Code.Aborted });
    await waitFor(async () => (await weightsOn(a)).stable === 100, "the first change everywhere", 1000);
    expect(await weightsOn(a)).toEqual({ canary: 0, stable: 100 });
  });

  it("changes made at once through both gateways are all kept (none overwrites another)", async () => {
    const [a, b] = gateways as [GatewayProcess, GatewayProcess];
    const stable = replicas[0]?.url as string;
    const canary = replicas[1]?.url as string;
    await Promise.all([
      admin(a).drainReplica({ replicaId: stable }),
      admin(b).drainReplica({ replicaId: canary }),
      admin(a).setRoutingPolicy({ model: "m", policy: { queueThreshold: 9 } }),
      admin(b).setTrafficSplit({
        model: "m",
        weights: [
          { version: "stable", weight: 60 },
          { version: "canary", weight: 40 },
        ],
      }),
    ]);
    for (const g of [a, b]) {
      await waitFor(
        async () => {
          const m = (await admin(g).getModel({ model: "m" })).model;
          const drained = m?.versions
            .flatMap((v) => v.replicas)
            .filter((r) => r.state === ReplicaState.DRAINING).length;
          return drained === 2 && m?.routingPolicy?.queueThreshold === 9 && m.versions[0]?.weight === 40;
        },
        "both drains, the policy and the split on every gateway",
        1000,
      );
    }
    await Promise.all([
      admin(a).undrainReplica({ replicaId: stable }),
      admin(b).undrainReplica({ replicaId: canary }),
    ]);
  });

  it("a restarted gateway starts with the stored state; a file broken by hand changes nothing", async () => {
    const [a] = gateways as [GatewayProcess, GatewayProcess];
    await a.stop();
    const restarted = await startGatewayProcess(config());
    gateways[0] = restarted;
    expect(await weightsOn(restarted)).toEqual({ canary: 40, stable: 60 });
    const before = readFileSync(stateFile, "utf8");
    writeFileSync(stateFile, "models: {m: {version: nope}}\n");
    await waitFor(
      () => restarted.output().includes("control state file not applied"),
      "the error reported",
      2000,
    );
    expect(await weightsOn(restarted)).toEqual({ canary: 40, stable: 60 });
    writeFileSync(stateFile, before);
  });

  it("the store itself: a model's changes are numbered, and a lock left by a dead process is taken over", async () => {
    const file = join(dir, "direct.yaml");
    const store = createFileControlStore({ file });
    const first = await store.update("x", (c) => ({ ...c, weights: { v: 1 } }));
    const second = await store.update("x", (c) => ({ ...c, drained: ["http://r"] }));
    expect([first.version, second.version]).toEqual(["1", "2"]);
    expect(second.control).toEqual({ weights: { v: 1 }, drained: ["http://r"] });
    writeFileSync(`${file}.lock`, "99999"); // a crashed writer's lock, fresh: writes wait, then fail
    await expect(store.update("x", (c) => c)).rejects.toMatchObject({ code: Code.Unavailable });
    const old = new Date(Date.now() - 60_000);
    utimesSync(`${file}.lock`, old, old); // stale: taken over
    expect((await store.update("x", (c) => c)).version).toBe("3");
    await store.close();
  }, 20_000);
});
