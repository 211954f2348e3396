/**
 * The control state in a real cluster (server/control/kube-control-store.ts, lease.ts): deploy/'s
 * KinferModel CRD and the gateway's control Role are applied, and three gateways run under the
 * kinfer-gateway ServiceAccount's own token, each watching the KinferModels and campaigning for the rollout
 * Lease. A split set through one gateway's admin API is applied by all three within a second; a change
 * over a stale state_version is ABORTED; changes made at once through all three are all kept; the built-in
 * rollout runs on the Lease holder and, when that gateway goes away, another takes the Lease and resumes
 * from the stored step; API keys live in the Secret kinfer-gateway-keys, which the admin API's key calls
 * write and every gateway follows within a second; with the apiserver down, gateways keep serving on their
 * last state and refuse writes with UNAVAILABLE, and take writes again once it is back.
 */
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { CustomObjectsApi, KubeConfig } from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { stringify } from "yaml";
import { AdminService } from "../../gen/es/kinfer/admin/v1/admin_pb.js";
import { InferenceService } from "../../gen/es/kinfer/inference/v1/inference_pb.js";
import { parseGatewayConfig } from "../../server/config/gateway-config.js";
import {
  createKubeControlStore,
  type KinferModelObject,
  objectName,
} from "../../server/control/kube-control-store.js";
import { createLeaseElector, type LeaderElector } from "../../server/control/lease.js";
import { type Gateway, startGateway } from "../../server/gateway.js";
import { newKey } from "../../server/tenants/key-store.js";
import { openSecretKeyStore } from "../../server/tenants/secret-key-store.js";
import { type SimServer, startSimServer } from "../../sim/http/sim-server.js";
import { waitFor } from "../helpers/idle.js";
import { type ControlPlane, startControlPlane } from "./control-plane.js";

const root = new URL("../..", import.meta.url).pathname;
const NS = "kinfer-system";
const TOKEN = "admin-token-for-k8s-control-0001";
let cp: ControlPlane;
let asGateway: () => KubeConfig;
let replicas: SimServer[] = [];
let firstSecret: string;
const gateways: { gateway: Gateway; leader: LeaderElector; name: string }[] = [];

const kubectl = (args: string[], input?: string) =>
  execFileSync(join(cp.bin, "kubectl"), ["--kubeconfig", cp.kubeconfig, ...args], {
    encoding: "utf8",
    ...(input !== undefined ? { input } : {}),
    stdio: ["pipe", "pipe", "pipe"],
  });

const ROLLOUT = { intervalMs: 400, stepWeight: 20, maxWeight: 80, minRequests: 3, maxTtftRatio: 100 };

async function startOne(name: string) {
  const kc = asGateway();
  const control = createKubeControlStore(kc, { namespace: NS });
  await control.synced;
  const leader = createLeaseElector(kc, {
    namespace: NS,
    name: "kinfer-gateway-rollout",
    identity: name,
    leaseDurationMs: 2000,
    renewDeadlineMs: 1500,
    retryPeriodMs: 250,
  });
  const keys = openSecretKeyStore(kc, { namespace: NS, name: "kinfer-gateway-keys" });
  await keys.synced;
  const gateway = await startGateway({
    keys,
    config: parseGatewayConfig({
      tenants: { keysSecret: { name: "kinfer-gateway-keys", namespace: NS } },
      logLevel: "silent",
      listen: { port: 0 },
      admin: { host: "127.0.0.1", port: 0, token: TOKEN },
      scrape: { intervalMs: 50 },
      control: { store: "kubernetes", namespace: NS },
      models: [
        {
          name: "m",
          versions: [
            { name: "stable", weight: 100, replicas: [replicas[0]?.url, replicas[1]?.url] },
            { name: "canary", weight: 0, replicas: [replicas[2]?.url] },
          ],
        },
        {
          name: "rolled/out model",
          rollout: ROLLOUT,
          versions: [
            { name: "stable", weight: 100, replicas: [replicas[3]?.url] },
            { name: "canary", weight: 0, replicas: [replicas[4]?.url] },
          ],
        },
      ],
    }),
    control,
    leader,
  });
  const entry = { gateway, leader, name };
  gateways.push(entry);
  return entry;
}

const admin = (g: Gateway) =>
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
const weightsOf = (g: Gateway, model = "m") =>
  Object.fromEntries(g.table.model(model)?.versions.map((v) => [v.name, v.weight]) ?? []);

beforeAll(async () => {
  cp = await startControlPlane(); // private: this file stops its apiserver
  kubectl(["create", "namespace", NS]);
  kubectl(["apply", "-f", join(root, "deploy/base/gateway/kinfermodel-crd.yaml")]);
  kubectl(["wait", "--for=condition=Established", "crd/kinfermodels.kinfer.io", "--timeout=60s"]);
  kubectl(["-n", NS, "create", "serviceaccount", "kinfer-gateway"]);
  // The operator's Secret, starting with one key (made as `npm run keys` makes them).
  const first = newKey({ tenant: "first" });
  firstSecret = first.secret;
  kubectl([
    "-n",
    NS,
    "create",
    "secret",
    "generic",
    "kinfer-gateway-keys",
    `--from-literal=keys.yaml=${stringify({ keys: [first.record] })}`,
  ]);
  kubectl(["-n", NS, "create", "secret", "generic", "other-secret", "--from-literal=x=y"]);
  kubectl(["-n", NS, "apply", "-f", join(root, "deploy/base/gateway/control-rbac.yaml")]);
  const token = kubectl(["-n", NS, "create", "token", "kinfer-gateway", "--duration=1h"]).trim();
  asGateway = () => {
    const kc = new KubeConfig();
    kc.loadFromOptions({
      clusters: [{ name: "test", server: cp.url, caFile: cp.caFile }],
      users: [{ name: "kinfer-gateway", token }],
      contexts: [{ name: "test", cluster: "test", user: "kinfer-gateway" }],
      currentContext: "test",
    });
    return kc;
  };
  replicas = await Promise.all(
    ["m", "m", "m", "rolled/out model", "rolled/out model"].map((model) => startSimServer({ model })),
  );
  for (const name of ["gateway-a", "gateway-b", "gateway-c"]) await startOne(name);
}, 180_000);

afterAll(async () => {
  await Promise.all(gateways.map((g) => g.gateway.close()));
  await Promise.all(replicas.map((r) => r.close()));
  await cp?.stop();
});

describe("control state shared through the cluster", () => {
  it("the gateway's ServiceAccount may do what the store needs and no more", () => {
    // `kubectl auth can-i` prints yes or no, and exits 1 for no.
    const can = (verb: string, resource: string) => {
      try {
        kubectl([
          "auth",
          "can-i",
          verb,
          resource,
          "-n",
          NS,
          `--as=system:serviceaccount:${NS}:kinfer-gateway`,
        ]);
        return true;
      } catch (err) {
        if (String((err as { stdout?: string }).stdout).trim() === "no") return false;
        throw err;
      }
    };
    expect(can("update", "kinfermodels.kinfer.io")).toBe(true);
    expect(can("update", "kinfermodels.kinfer.io/status")).toBe(true);
    expect(can("update", "leases.coordination.k8s.io/kinfer-gateway-rollout")).toBe(true);
    expect(can("update", "leases.coordination.k8s.io/kube-scheduler")).toBe(false);
    expect(can("delete", "kinfermodels.kinfer.io")).toBe(false);
    expect(can("update", "secrets/kinfer-gateway-keys")).toBe(true);
    expect(can("get", "secrets/other-secret")).toBe(false);
    expect(can("list", "secrets")).toBe(false); // only with the field selector naming its own
  });

  it("a split set through one gateway is applied by all three within a second", async () => {
    const [a] = gateways as [(typeof gateways)[0]];
    const set = await admin(a.gateway).setTrafficSplit({
      model: "m",
      weights: [
        { version: "stable", weight: 75 },
        { version: "canary", weight: 25 },
      ],
    });
    const started = performance.now();
    for (const g of gateways)
      await waitFor(() => weightsOf(g.gateway).canary === 25, `${g.name} applies it`, 1000);
    expect(performance.now() - started).toBeLessThan(1000);
    // It is a KinferModel an operator can read with kubectl.
    const obj = JSON.parse(kubectl(["-n", NS, "get", "kinfermodel", objectName("m"), "-o", "json"]));
    expect(obj.spec.weights).toEqual([
      { version: "canary", weight: 25 },
      { version: "stable", weight: 75 },
    ]);
    expect(set.model?.stateVersion).toBe(obj.metadata.resourceVersion);
  });

  it("a change over a stale state_version is ABORTED; changes made at once through all three are all kept", async () => {
    const [a, b, c] = gateways.map((g) => g.gateway) as [Gateway, Gateway, Gateway];
    const read = (await admin(a).getModel({ model: "m" })).model?.stateVersion as string;
    await admin(b).setTrafficSplit({
      model: "m",
      weights: [{ version: "stable", weight: 1 }],
      expectedStateVersion: read,
    });
    await expect(
      admin(c).setTrafficSplit({
        model: "m",
        weights: [{ version: "canary", weight: 1 }],
        expectedStateVersion: read,
      }),
    ).rejects.toMatchObject({ code: Code.Aborted });
    // Three writers at once, each changing a different part: conflicts are re-read and re-applied.
    await Promise.all([
      admin(a).drainReplica({ replicaId: replicas[0]?.url as string }),
      admin(b).setRoutingPolicy({ model: "m", policy: { queueThreshold: 7 } }),
      admin(c).setTrafficSplit({
        model: "m",
        weights: [
          { version: "stable", weight: 50 },
          { version: "canary", weight: 50 },
        ],
      }),
    ]);
    for (const g of [a, b, c]) {
      await waitFor(
        () => {
          const m = g.table.model("m");
          const drained = m?.versions[1]?.replicas.find((r) => r.id === replicas[0]?.url)?.draining;
          return drained === true && m?.policy.queueThreshold === 7 && weightsOf(g).canary === 50;
        },
        "all three changes on every gateway",
        2000,
      );
    }
    await admin(a).undrainReplica({ replicaId: replicas[0]?.url as string });
  });

  it("the rollout runs on the Lease holder; when it goes away another resumes from the stored step", async () => {
    const model = "rolled/out model";
    const api = asGateway().makeApiClient(CustomObjectsApi);
    const stored = async () =>
      (
        (await api
          .getNamespacedCustomObject({
            group: "kinfer.io",
            version: "v1alpha1",
            namespace: NS,
            plural: "kinfermodels",
            name: objectName(model),
          })
          .catch(() => undefined)) as KinferModelObject | undefined
      )?.status?.rollout;
    // Traffic through every gateway, so that whoever leads has requests to judge.
    let stop = false;
    const load = Promise.all(
      gateways.map(async (g) => {
        const client = createClient(
          InferenceService,
          createConnectTransport({ baseUrl: g.gateway.url, httpVersion: "2" }),
        );
        while (!stop) {
          try {
            for await (const _ of client.generate(
              { model, prompt: "hi", sampling: { maxTokens: 2 } },
              { headers: { authorization: `Bearer ${firstSecret}` } },
            )) {
              // drain
            }
          } catch {
            await new Promise((r) => setTimeout(r, 20)); // a gateway being closed
          }
        }
      }),
    );
    try {
      await waitFor(async () => ((await stored())?.canaryWeight ?? 0) >= 40, "the rollout past 40%", 30_000);
      const leaders = gateways.filter((g) => g.leader.isLeader());
      expect(leaders).toHaveLength(1);
      const first = leaders[0] as (typeof gateways)[0];
      const weightAtHandover = (await stored())?.canaryWeight as number;
      await first.gateway.close(); // releases the Lease
      gateways.splice(gateways.indexOf(first), 1);
      await waitFor(
        () => gateways.some((g) => g.leader.isLeader()),
        "another gateway to take the Lease",
        5000,
      );
      // The next leader goes on from the stored step: the weight never goes back, and the rollout finishes.
      const seen: number[] = [];
      await waitFor(
        async () => {
          const s = await stored();
          if (s !== undefined) seen.push(s.canaryWeight);
          return s?.phase === "promoted";
        },
        "the rollout promoted by the new leader",
        30_000,
      );
      expect(Math.min(...seen)).toBeGreaterThanOrEqual(weightAtHandover);
      for (const g of gateways)
        await waitFor(
          () => weightsOf(g.gateway, model).canary === 100,
          `${g.name} sends all to the canary`,
          2000,
        );
      // A replica started now (scale-out) starts with the stored state.
      const added = await startOne("gateway-d");
      expect(weightsOf(added.gateway, model).canary).toBe(100);
      expect(weightsOf(added.gateway).canary).toBe(50);
    } finally {
      stop = true;
      await load;
    }
  }, 90_000);

  it("API keys: created through one gateway, in force on all within a second; revoked through another, refused by all", async () => {
    const [a, b, c] = gateways.map((g) => g.gateway) as [Gateway, Gateway, Gateway];
    const works = async (g: Gateway, secret: string) => {
      const client = createClient(
        InferenceService,
        createConnectTransport({ baseUrl: g.url, httpVersion: "2" }),
      );
      try {
        for await (const _ of client.generate(
          { model: "m", prompt: "key?", sampling: { maxTokens: 1 } },
          { headers: { authorization: `Bearer ${secret}` } },
        )) {
          // served
        }
        return true;
      } catch (err) {
        if (ConnectError.from(err).code === Code.Unauthenticated) return false;
        throw err;
      }
    };
    expect(await works(c, firstSecret)).toBe(true);
    const created = await admin(a).createApiKey({ tenant: "acme", allowedModels: ["m"] });
    const started = performance.now();
    for (const g of [a, b, c])
      await waitFor(() => works(g, created.secret), "the new key on every gateway", 1000);
    expect(performance.now() - started).toBeLessThan(1000);
    const stored = kubectl([
      "-n",
      NS,
      "get",
      "secret",
      "kinfer-gateway-keys",
      "-o",
      "jsonpath={.data.keys\\.yaml}",
    ]);
    const text = Buffer.from(stored, "base64").toString("utf8");
    expect(text).toContain(created.key?.id);
    expect(text).not.toContain(created.secret); // only its digest
    await admin(b).revokeApiKey({ id: created.key?.id as string });
    for (const g of [a, b, c])
      await waitFor(async () => !(await works(g, created.secret)), "revoked everywhere", 1000);
    expect(await works(a, firstSecret)).toBe(true);
  });

  it("with the apiserver down, gateways serve on their last state and refuse writes; then take them again", async () => {
    const [a, b] = gateways.map((g) => g.gateway) as [Gateway, Gateway];
    await cp.stopApiserver();
    try {
      const client = createClient(
        InferenceService,
        createConnectTransport({ baseUrl: b.url, httpVersion: "2" }),
      );
      for await (const _ of client.generate(
        { model: "m", prompt: "still here", sampling: { maxTokens: 2 } },
        { headers: { authorization: `Bearer ${firstSecret}` } },
      )) {
        // served
      }
      expect(weightsOf(b).canary).toBe(50);
      await expect(
        admin(a).setTrafficSplit({ model: "m", weights: [{ version: "stable", weight: 1 }] }),
      ).rejects.toMatchObject({ code: Code.Unavailable });
      await expect(admin(a).createApiKey({ tenant: "during-outage" })).rejects.toMatchObject({
        code: Code.Unavailable,
      });
    } finally {
      await cp.startApiserver();
    }
    await waitFor(
      async () =>
        admin(a)
          .setTrafficSplit({
            model: "m",
            weights: [
              { version: "stable", weight: 90 },
              { version: "canary", weight: 10 },
            ],
          })
          .then(
            () => true,
            () => false,
          ),
      "writes accepted again",
      30_000,
    );
    // b's watch reconnects (supervised informer) and applies the change made after the outage.
    await waitFor(() => weightsOf(b).canary === 10, "gateway b to see the change after the outage", 30_000);
  }, 90_000);
});
