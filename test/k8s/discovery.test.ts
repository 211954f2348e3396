/**
 * Kubernetes discovery against a real apiserver: EndpointSlices labelled as kinfer models are created,
 * scaled and deleted, and the gateway's routing table follows within 2 s; slices in a namespace the
 * config does not list are ignored; the apiserver is restarted mid-test and routing carries on with the
 * endpoints it knew, then follows new changes again.
 * The slices point at simulated replicas on a test host (a network namespace, as the apiserver rejects
 * loopback addresses in EndpointSlices), so requests really flow.
 */

import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { CoreV1Api, DiscoveryV1Api, KubeConfig, type V1EndpointSlice } from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { InferenceService } from "../../gen/es/kinfer/inference/v1/inference_pb.js";
import { parseGatewayConfig } from "../../server/config/gateway-config.js";
import {
  createKubeEndpointSource,
  type KubeEndpointSource,
} from "../../server/discovery/endpoint-slice-source.js";
import { type Gateway, startGateway } from "../../server/gateway.js";

import { type ControlPlane, startControlPlane } from "./control-plane.js";
import { createTestHost, type TestHost } from "./test-host.js";

const NS = "models";
const PORT = 8000;
let cp: ControlPlane;
let kc: KubeConfig;
let source: KubeEndpointSource;
let gateway: Gateway;
let host: TestHost;

beforeAll(async () => {
  cp = await startControlPlane(); // private: this file restarts its apiserver
  kc = new KubeConfig();
  kc.loadFromFile(cp.kubeconfig);
  await kc.makeApiClient(CoreV1Api).createNamespace({ body: { metadata: { name: NS } } });
  host = createTestHost(3);
  for (const address of host.addresses) await host.startReplica(address, PORT, "m");
  source = createKubeEndpointSource(kc, { namespaces: [NS], silenceMs: 10_000 });
  await source.synced;
  gateway = await startGateway({
    config: parseGatewayConfig({
      logLevel: "silent",
      listen: { port: 0 },
      scrape: { intervalMs: 50 },
      discovery: { source: "kubernetes", namespaces: [NS] },
      models: [{ name: "m", versions: [{ name: "stable" }] }],
    }),
    endpoints: source,
  });
});

afterAll(async () => {
  await gateway?.close();
  await host?.destroy();
  await cp?.stop();
});

const discovery = () => kc.makeApiClient(DiscoveryV1Api);
const urlOf = (address: string) => `http://${address}:${PORT}`;

/** The EndpointSlice the EndpointSlice controller writes for a Service labelled as model m, version stable. */
function slice(ready: Record<string, boolean>): V1EndpointSlice {
  return {
    apiVersion: "discovery.k8s.io/v1",
    kind: "EndpointSlice",
    metadata: {
      name: "m-stable-abcde",
      namespace: NS,
      labels: {
        "kinfer.io/model": "m",
        "kinfer.io/version": "stable",
        "kubernetes.io/service-name": "m-stable",
      },
    },
    addressType: "IPv4",
    ports: [{ name: "http", port: PORT, protocol: "TCP" }],
    endpoints: Object.entries(ready).map(([address, isReady]) => ({
      addresses: [address],
      conditions: { ready: isReady },
    })),
  };
}

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
  const client = createClient(
    InferenceService,
    createConnectTransport({ baseUrl: gateway.url, httpVersion: "2" }),
  );
  let deltas = 0;
  for await (const res of client.generate({ model: "m", prompt: "hi", sampling: { maxTokens: 3 } })) {
    if (res.event.case === "delta") deltas++;
  }
  return deltas;
}

describe("EndpointSlice discovery", () => {
  it("follows slices being created, scaled, marked not ready and deleted, within 2 s", async () => {
    const [a, b, c] = host.addresses as [string, string, string];
    const put = (ready: Record<string, boolean>) =>
      discovery().replaceNamespacedEndpointSlice({
        name: "m-stable-abcde",
        namespace: NS,
        body: slice(ready),
      });
    await discovery().createNamespacedEndpointSlice({ namespace: NS, body: slice({ [a]: true }) });
    expect(await routedUrls(2000, [urlOf(a)])).toEqual([urlOf(a)]);
    await gateway.scrapeNow();
    expect(await generate()).toBeGreaterThan(0);

    await put({ [a]: true, [b]: true, [c]: true }); // scale out
    expect(await routedUrls(2000, [urlOf(a), urlOf(b), urlOf(c)])).toEqual(
      [urlOf(a), urlOf(b), urlOf(c)].sort(),
    );
    await put({ [a]: true, [b]: false, [c]: true }); // readiness from the endpoint's conditions
    expect(await routedUrls(2000, [urlOf(a), urlOf(c)])).toEqual([urlOf(a), urlOf(c)].sort());
    await put({ [a]: true }); // scale in
    expect(await routedUrls(2000, [urlOf(a)])).toEqual([urlOf(a)]);
    await discovery().deleteNamespacedEndpointSlice({ name: "m-stable-abcde", namespace: NS });
    expect(await routedUrls(2000, [])).toEqual([]);
    await discovery().createNamespacedEndpointSlice({ namespace: NS, body: slice({ [a]: true }) });
    expect(await routedUrls(2000, [urlOf(a)])).toEqual([urlOf(a)]);
  });

  it("reads only the namespaces it is given: a slice labelled as model m elsewhere is never routed to", async () => {
    const [a, , c] = host.addresses as [string, string, string];
    await kc.makeApiClient(CoreV1Api).createNamespace({ body: { metadata: { name: "elsewhere" } } });
    await discovery().createNamespacedEndpointSlice({
      namespace: "elsewhere",
      body: { ...slice({ [c]: true }), metadata: { ...slice({}).metadata, namespace: "elsewhere" } },
    });
    await new Promise((r) => setTimeout(r, 1000));
    expect(await routedUrls()).toEqual([urlOf(a)]);
    // The config says so too: the kubernetes source must name its namespaces.
    expect(() =>
      parseGatewayConfig({
        discovery: { source: "kubernetes" },
        models: [{ name: "m", versions: [{ name: "stable" }] }],
      }),
    ).toThrow(/namespaces/);
  });

  it("keeps routing through an apiserver restart, then follows changes again", async () => {
    const [a, b] = host.addresses as [string, string];
    expect(await routedUrls()).toEqual([urlOf(a)]);
    await cp.stopApiserver();
    // The apiserver is down: known endpoints stay and requests still flow.
    await new Promise((r) => setTimeout(r, 1500));
    expect(await routedUrls()).toEqual([urlOf(a)]);
    expect(await generate()).toBeGreaterThan(0);
    await cp.startApiserver();
    // After the restart the informer is back (restarted by its supervisor) and sees new changes.
    await discovery().replaceNamespacedEndpointSlice({
      name: "m-stable-abcde",
      namespace: NS,
      body: slice({ [a]: true, [b]: true }),
    });
    expect(await routedUrls(15_000, [urlOf(a), urlOf(b)])).toEqual([urlOf(a), urlOf(b)].sort());
    await gateway.scrapeNow();
    expect(await generate()).toBeGreaterThan(0);
  });
});
