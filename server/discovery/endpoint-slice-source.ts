/**
 * Kubernetes discovery: replicas from EndpointSlices labelled as kinfer models, in the namespaces the
 * config names and nowhere else, through one supervised @kubernetes/client-node informer per namespace
 * (restarted after errors, relisted after 410 Gone, restarted when silent). Behind the EndpointSource
 * interface of the static source.
 *
 * Confinement is the point: a namespaced Role per listed namespace is all the gateway needs, and a
 * Service labelled as a model in any other namespace never receives a prompt. This source never lists
 * across namespaces.
 *
 * The contract: a model's Service carries the labels kinfer.io/model=<model> and
 * kinfer.io/version=<version>; the EndpointSlice controller copies a Service's labels to its slices, so
 * the gateway watches only slices with kinfer.io/model. A slice's endpoints become replicas at
 * http://<address>:<port>, with the port named "http" (or the slice's first port); readiness comes from
 * the endpoint's conditions (ready unset counts as ready, as the API specifies; terminating endpoints are
 * not ready). Known endpoints stay while the watch reconnects.
 */
import { DiscoveryV1Api, type KubeConfig, makeInformer, type V1EndpointSlice } from "@kubernetes/client-node";
import { superviseInformer } from "../../common/kube/supervise-informer.js";
import type { Endpoint, EndpointSource } from "./endpoint-source.js";

export const MODEL_LABEL = "kinfer.io/model";
export const VERSION_LABEL = "kinfer.io/version";

export interface KubeSourceOptions {
  /** The namespaces whose EndpointSlices name replicas; at least one. */
  namespaces: readonly string[];
  /** Restart the watch when it has delivered nothing for this long. Default 5 minutes. */
  silenceMs?: number;
  log?: (message: string, fields?: Record<string, unknown>) => void;
}

export interface KubeEndpointSource extends EndpointSource {
  /** Resolves after the first list. */
  readonly synced: Promise<void>;
}

/** The endpoints of one slice. */
export function endpointsOfSlice(slice: V1EndpointSlice): Endpoint[] {
  const labels = slice.metadata?.labels ?? {};
  const model = labels[MODEL_LABEL];
  if (!model) return [];
  const version = labels[VERSION_LABEL] || "stable";
  const port = slice.ports?.find((p) => p.name === "http") ?? slice.ports?.[0];
  if (port?.port === undefined) return [];
  const family = slice.addressType;
  if (family !== "IPv4" && family !== "IPv6") return [];
  return (slice.endpoints ?? []).flatMap((e) => {
    const address = e.addresses[0];
    if (address === undefined) return [];
    const host = family === "IPv6" ? `[${address}]` : address;
    const ready = e.conditions?.ready !== false && e.conditions?.terminating !== true;
    return [{ model, version, url: `http://${host}:${port.port}`, ready }];
  });
}

export function createKubeEndpointSource(kc: KubeConfig, options: KubeSourceOptions): KubeEndpointSource {
  const namespaces = [...new Set(options.namespaces)];
  if (namespaces.length === 0) throw new RangeError("Kubernetes discovery needs at least one namespace");
  const api = kc.makeApiClient(DiscoveryV1Api);
  const slices = new Map<string, Endpoint[]>();
  let current: Endpoint[] = [];
  const listeners = new Set<() => void>();

  const changed = () => {
    // One replica per URL: a pod in two slices (during a rollout) must not be counted twice.
    const byUrl = new Map<string, Endpoint>();
    for (const list of slices.values()) {
      for (const e of list) {
        const key = `${e.model}\u0000${e.version}\u0000${e.url}`;
        const seen = byUrl.get(key);
        byUrl.set(key, seen === undefined ? e : { ...e, ready: seen.ready || e.ready });
      }
    }
    current = [...byUrl.values()];
    for (const l of listeners) l();
  };
  const key = (s: V1EndpointSlice) => `${s.metadata?.namespace ?? ""}/${s.metadata?.name ?? ""}`;

  const watches = namespaces.map((namespace) => {
    const informer = makeInformer<V1EndpointSlice>(
      kc,
      `/apis/discovery.k8s.io/v1/namespaces/${namespace}/endpointslices`,
      () => api.listNamespacedEndpointSlice({ namespace, labelSelector: MODEL_LABEL }),
      MODEL_LABEL,
    );
    const watch = superviseInformer(
      `endpointslice/${namespace}`,
      informer,
      options.silenceMs ?? 300_000,
      options.log ?? (() => {}),
    );
    const upsert = (s: V1EndpointSlice) => {
      watch.touch();
      slices.set(key(s), endpointsOfSlice(s));
      changed();
    };
    informer.on("add", upsert);
    informer.on("update", upsert);
    informer.on("delete", (s) => {
      watch.touch();
      slices.delete(key(s));
      changed();
    });
    return { informer, watch };
  });

  return {
    name: "kubernetes",
    synced: Promise.all(watches.map(({ informer }) => informer.start())).then(() => {}),
    endpoints: () => current,
    onChange(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    async close() {
      listeners.clear();
      await Promise.all(watches.map(({ watch }) => watch.stop()));
    },
  };
}
