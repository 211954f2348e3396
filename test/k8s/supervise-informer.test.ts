/**
 * superviseInformer against a real apiserver: a silent watch is restarted by the watchdog, the restart's
 * own abort of the old watch is not taken for a failure (it restarted the informer every second, forever),
 * and events still flow after restarts.
 */
import { CoreV1Api, KubeConfig, makeInformer, type V1ConfigMap } from "@kubernetes/client-node";
import { afterAll, beforeAll, expect, it } from "vitest";
import { superviseInformer } from "../../common/kube/supervise-informer.js";
import { waitFor } from "../helpers/idle.js";
import { type ControlPlane, startControlPlane } from "./control-plane.js";

const NS = "supervised";
let cp: ControlPlane;
let core: CoreV1Api;

beforeAll(async () => {
  cp = await startControlPlane();
  const kc = new KubeConfig();
  kc.loadFromFile(cp.kubeconfig);
  core = kc.makeApiClient(CoreV1Api);
  await core.createNamespace({ body: { metadata: { name: NS } } });
}, 120_000);

afterAll(async () => {
  await cp?.stop();
});

it("a silent watch is restarted by the watchdog alone: the restart's own abort is no failure, and events still flow", async () => {
  const kc = new KubeConfig();
  kc.loadFromFile(cp.kubeconfig);
  const informer = makeInformer<V1ConfigMap>(kc, `/api/v1/namespaces/${NS}/configmaps`, () =>
    core.listNamespacedConfigMap({ namespace: NS }),
  );
  const seen = new Set<string>();
  const restarts: string[] = [];
  const silenceMs = 2000;
  const watch = superviseInformer("configmap", informer, silenceMs, (_, fields) =>
    restarts.push(String(fields?.why)),
  );
  informer.on("add", (cm) => {
    watch.touch();
    seen.add(cm.metadata?.name ?? "");
  });
  await informer.start();
  try {
    // Nothing changes: the watchdog restarts the silent watch (checked every silenceMs).
    await waitFor(() => restarts.length >= 2, "two watchdog restarts", 15_000);
    const window = 8_000;
    const before = restarts.length;
    await new Promise((r) => setTimeout(r, window));
    // At most one restart per silence period plus the watchdog's own period; the loop restarted every 1 s.
    expect(restarts.length - before).toBeLessThanOrEqual(Math.ceil(window / silenceMs));
    expect(restarts.filter((why) => !why.startsWith("no event for"))).toEqual([]);
    // Still watching: a new object arrives.
    await core.createNamespacedConfigMap({ namespace: NS, body: { metadata: { name: "after-restarts" } } });
    await waitFor(() => seen.has("after-restarts"), "the add event after restarts", 5_000);
  } finally {
    await watch.stop();
  }
}, 60_000);

it("an apiserver that refuses every list is retried with a growing backoff, not every second", async () => {
  // Port 1 on loopback: nothing listens, every list is refused at once (an apiserver down for minutes).
  const kc = new KubeConfig();
  kc.loadFromOptions({
    clusters: [{ name: "down", server: "http://127.0.0.1:1", skipTLSVerify: true }],
    users: [{ name: "u" }],
    contexts: [{ name: "c", cluster: "down", user: "u" }],
    currentContext: "c",
  });
  const api = kc.makeApiClient(CoreV1Api);
  const informer = makeInformer<V1ConfigMap>(kc, `/api/v1/namespaces/${NS}/configmaps`, () =>
    api.listNamespacedConfigMap({ namespace: NS }),
  );
  const waits: number[] = [];
  const watch = superviseInformer("configmap", informer, 60_000, (_, fields) =>
    waits.push(Number(fields?.backoffMs)),
  );
  await informer.start(); // resolves although its list failed
  try {
    await new Promise((r) => setTimeout(r, 8_000));
    // Restarts after 1, 2 and 4 s (7 s in all); the old supervisor restarted every second (8 times).
    expect(waits.slice(0, 3)).toEqual([1000, 2000, 4000]);
    expect(waits.length).toBeLessThanOrEqual(4);
  } finally {
    await watch.stop();
  }
}, 30_000);
