/**
 * The routing table (server/routing/routing-table.ts): models and versions sorted by name, versions'
 * served model names, replicas from the endpoints (state kept across rebuilds, forgotten once they leave
 * discovery), and the control state's overrides (weights, policies, drains) applied over config reloads,
 * with listeners told of every change.
 */
import { describe, expect, it } from "vitest";
import { type GatewayConfig, parseGatewayConfig } from "../../../server/config/gateway-config.js";
import type { ModelControl } from "../../../server/control/control-state.js";
import type { Endpoint } from "../../../server/discovery/endpoint-source.js";
import type { Replica } from "../../../server/replicas/replica.js";
import { createRoutingTable } from "../../../server/routing/routing-table.js";

const config: GatewayConfig = parseGatewayConfig({
  routing: { algorithm: "least-outstanding" },
  models: [
    {
      name: "zeta",
      versions: [{ name: "v1", replicas: ["http://z:1"] }],
    },
    {
      name: "alpha",
      routing: { algorithm: "round-robin" },
      versions: [
        { name: "stable", weight: 90, replicas: ["http://a:1", "http://a:2"] },
        { name: "canary", weight: 10, servedModelName: "alpha-next", replicas: ["http://a:3"] },
      ],
    },
  ],
});

const endpoints: Endpoint[] = [
  { model: "alpha", version: "stable", url: "http://a:1", ready: true },
  { model: "alpha", version: "stable", url: "http://a:2", ready: false },
  { model: "alpha", version: "canary", url: "http://a:3", ready: true },
  { model: "zeta", version: "v1", url: "http://z:1", ready: true },
];

const control = (entries: Record<string, Partial<ModelControl>>) =>
  new Map(Object.entries(entries).map(([k, v]) => [k, { drained: [], ...v } as ModelControl]));

function applied() {
  const tbl = createRoutingTable();
  tbl.apply(config, endpoints, "kubernetes");
  return tbl;
}

describe("applying config and endpoints", () => {
  it("lists models and versions sorted by name, with weights, served names, policies and replicas", () => {
    const tbl = applied();
    expect(tbl.models().map((m) => m.name)).toEqual(["alpha", "zeta"]);
    const alpha = tbl.model("alpha");
    expect(alpha?.policy.algorithm).toBe("round-robin");
    expect(tbl.model("zeta")?.policy.algorithm).toBe("least-outstanding");
    expect(alpha?.versions.map((v) => [v.name, v.weight, v.servedModelName])).toEqual([
      ["canary", 10, "alpha-next"],
      ["stable", 90, "alpha"],
    ]);
    const stable = alpha?.versions[1];
    expect(stable?.replicas.map((r) => [r.id, r.ready, r.source, r.version])).toEqual([
      ["http://a:1", true, "kubernetes", "stable"],
      ["http://a:2", false, "kubernetes", "stable"],
    ]);
    expect(tbl.replicas().map((r) => r.id)).toEqual(["http://a:3", "http://a:1", "http://a:2", "http://z:1"]);
    expect(tbl.model("nope")).toBeUndefined();
  });

  it("keeps a replica's state across rebuilds, and forgets a replica that left discovery", () => {
    const tbl = applied();
    const a1 = tbl.replicas().find((r) => r.id === "http://a:1") as Replica;
    a1.inFlight = 4;
    tbl.apply(
      config,
      endpoints.filter((e) => e.url !== "http://a:1"),
      "kubernetes",
    );
    expect(tbl.replicas().map((r) => r.id)).not.toContain("http://a:1");
    tbl.apply(config, endpoints, "kubernetes");
    const back = tbl.replicas().find((r) => r.id === "http://a:1") as Replica;
    expect(back).not.toBe(a1);
    expect(back.inFlight).toBe(0);
    // Readiness follows the endpoints.
    tbl.apply(
      config,
      endpoints.map((e) => ({ ...e, ready: true })),
      "kubernetes",
    );
    expect(tbl.replicas().every((r) => r.ready)).toBe(true);
  });
});

describe("control overrides", () => {
  it("weights replace the config's, versions a split does not name get 0, and they survive reloads", () => {
    const tbl = applied();
    tbl.setControl(control({ alpha: { weights: { canary: 100 } } }));
    expect(tbl.model("alpha")?.versions.map((v) => [v.name, v.weight])).toEqual([
      ["canary", 100],
      ["stable", 0],
    ]);
    // A model without control state keeps its config.
    expect(tbl.model("zeta")?.versions[0]?.weight).toBe(1);
    tbl.apply(config, endpoints, "kubernetes");
    expect(tbl.model("alpha")?.versions.map((v) => v.weight)).toEqual([100, 0]);
    // Control without weights keeps the config's weights.
    tbl.setControl(control({ alpha: { drained: [] } }));
    expect(tbl.model("alpha")?.versions.map((v) => v.weight)).toEqual([10, 90]);
  });

  it("a policy replaces the config's; without one the config's stays", () => {
    const tbl = applied();
    const policy = {
      ...(tbl.model("alpha")?.policy as ModelControl["policy"] & object),
      algorithm: "resource-aware" as const,
    };
    tbl.setControl(control({ alpha: { policy } }));
    expect(tbl.model("alpha")?.policy.algorithm).toBe("resource-aware");
    tbl.setControl(control({ alpha: {} }));
    expect(tbl.model("alpha")?.policy.algorithm).toBe("round-robin");
  });

  it("drained replicas are draining until the control state no longer names them", () => {
    const tbl = applied();
    tbl.setControl(control({ alpha: { drained: ["http://a:1"] } }));
    const byId = (id: string) => tbl.replicas().find((r) => r.id === id) as Replica;
    expect(byId("http://a:1").draining).toBe(true);
    expect(byId("http://a:2").draining).toBe(false);
    tbl.apply(config, endpoints, "kubernetes");
    expect(byId("http://a:1").draining).toBe(true);
    tbl.setControl(new Map());
    expect(byId("http://a:1").draining).toBe(false);
  });

  it("tells listeners after every apply and setControl, until they unsubscribe", () => {
    const tbl = createRoutingTable();
    const seen: string[][] = [];
    const off = tbl.onChange(() => seen.push(tbl.models().map((m) => m.name)));
    tbl.apply(config, endpoints, "static");
    tbl.setControl(control({ alpha: { weights: { stable: 1 } } }));
    expect(seen).toEqual([
      ["alpha", "zeta"],
      ["alpha", "zeta"],
    ]);
    expect(tbl.model("alpha")?.versions.map((v) => v.weight)).toEqual([0, 1]);
    off();
    tbl.apply(config, [], "static");
    expect(seen).toHaveLength(2);
    // With no endpoints, every version is there with no replicas.
    expect(tbl.model("alpha")?.versions.map((v) => v.replicas.length)).toEqual([0, 0]);
    expect(tbl.replicas()).toEqual([]);
  });
});
