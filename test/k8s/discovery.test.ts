/**
 * Kubernetes discovery against a real apiserver: EndpointSlices labelled as kinfer models are created,
 * scaled and deleted, and the gateway's routing table follows within 2 s; the apiserver is restarted
 * mid-test and routing carries on with the endpoints it knew, then follows new changes again.
 * The slices point at simulated replicas on loopback, so requests really flow.
 */
import { CoreV1Api, DiscoveryV1Api, KubeConfig, type V1EndpointSlice } from "@kubernetes/client-node";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { InferenceService } from "../../gen/es/kinfer/inference/v1/inference_pb.js";
import { parseGatewayConfig } from "../../server/config/gateway-config.js";
import { createKubeEndpointSource, type KubeEndpointSource } from "../../server/discovery/kube-source.js";
import { type Gateway, startGateway } from "../../server/gateway.js";
import { type Replica, startReplica } from "../../sim/replica.js";
import { type ControlPlane, startControlPlane } from "./control-plane.js";

const NS = "models";
let cp: ControlPlane;
let kc: KubeConfig;
let source: KubeEndpointSource;
let gateway: Gateway;
const replicas: Replica[] = [];

beforeAll(async () => {
  cp = await startControlPlane(); // private: this file restarts its apiserver
  kc = new KubeConfig();
  kc.loadFromFile(cp.kubeconfig);
  await kc.makeApiClient(CoreV1Api).createNamespace({ body: { metadata: { name: NS } } });
  for (let i = 0; i < 3; i++) replicas.push(await startReplica({ model: "m" }));
  source = createKubeEndpointSource(kc, { namespace: NS, silenceMs: 10_000 });
  await source.synced;
  gateway = await startGateway({
    config: parseGatewayConfig({
      logLevel: "silent",
      listen: { port: 0 },
      scrape: { intervalMs: 50 },
      discovery: { source: "kubernetes", namespace: NS },
      models: [{ name: "m", versions: [{ name: "stable" }] }],
    }),
    endpoints: source,
  });
});

afterAll(async () => {
  await gateway?.close();
  await Promise.all(replicas.map((r) => r.close()));
  await cp?.stop();
});

const discovery = () => kc.makeApiClient(DiscoveryV1Api);

/** An EndpointSlice as the EndpointSlice controller writes it for a labelled Service. */
function slice(name: string, ports: number[], ready = true): V1EndpointSlice {
  return {
    apiVersion: "discovery.k8s.io/v1",
    kind: "EndpointSlice",
    metadata: {
      name,
      namespace: NS,
      labels: { "kinfer.io/model": "m", "kinfer.io/version": "stable", "kubernetes.io/service-name": "m-stable" },
    },
    addressType: "IPv4",
    ports: [{ name: "http", port: ports[0] ?? 8000, protocol: "TCP" }],
    endpoints: ports.map(() => ({ addresses: ["127.0.0.1"], conditions: { ready } })),
  };
}

/** Replicas on loopback differ only by port: one slice per replica, as a port is per slice. */
const sliceFor = (r: Replica, ready = true) => slice(`m-${r.port}`, [r.port], ready);

async function routedUrls(timeoutMs = 2000, expected?: string[]): Promise<string[]> {
  const until = performance.now() + timeoutMs;
  for (;;) {
    const urls = gateway.table
      .replicas()
      .filter((r) => r.ready)
      .map((r) => r.url)
      .sort();
    if (expected === undefined || JSON.stringify(urls) === JSON.stringify([...expected].sort())) return urls;
    if (performance.now() > until) return urls;
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function generate(): Promise<number> {
  const client = createClient(InferenceService, createConnectTransport({ baseUrl: gateway.url, httpVersion: "2" }));
  let deltas = 0;
  for await (const res of client.generate({ model: "m", prompt: "hi", sampling: { maxTokens: 3 } })) {
    if (res.event.case === "delta") deltas++;
  }
  return deltas;
}

describe("EndpointSlice discovery", () => {
  it("follows slices being created, scaled, marked not ready and deleted, within 2 s", async () => {
    const [a, b, c] = replicas as [Replica, Replica, Replica];
    await discovery().createNamespacedEndpointSlice({ namespace: NS, body: sliceFor(a) });
    expect(await routedUrls(2000, [a.url])).toEqual([a.url]);
    await gateway.scrapeNow();
    expect(await generate()).toBeGreaterThan(0);

    // Scale out.
    await discovery().createNamespacedEndpointSlice({ namespace: NS, body: sliceFor(b) });
    await discovery().createNamespacedEndpointSlice({ namespace: NS, body: sliceFor(c) });
    expect(await routedUrls(2000, [a.url, b.url, c.url])).toEqual([a.url, b.url, c.url].sort());

    // Readiness from the endpoint's conditions.
    await discovery().replaceNamespacedEndpointSlice({ name: `m-${b.port}`, namespace: NS, body: sliceFor(b, false) });
    expect(await routedUrls(2000, [a.url, c.url])).toEqual([a.url, c.url].sort());

    // Scale in.
    await discovery().deleteNamespacedEndpointSlice({ name: `m-${c.port}`, namespace: NS });
    expect(await routedUrls(2000, [a.url])).toEqual([a.url]);
  });

  it("keeps routing through an apiserver restart, then follows changes again", async () => {
    const [a, b] = replicas as [Replica, Replica];
    expect(await routedUrls()).toEqual([a.url]);
    await cp.stopApiserver();
    // The apiserver is down: known endpoints stay and requests still flow.
    await new Promise((r) => setTimeout(r, 1500));
    expect(await routedUrls()).toEqual([a.url]);
    expect(await generate()).toBeGreaterThan(0);
    await cp.startApiserver();
    // After the restart, the informer is back (restarted by its supervisor) and sees new changes.
    await discovery().replaceNamespacedEndpointSlice({ name: `m-${b.port}`, namespace: NS, body: sliceFor(b, true) });
    expect(await routedUrls(15_000, [a.url, b.url])).toEqual([a.url, b.url].sort());
    expect(await generate()).toBeGreaterThan(0);
  });
});
