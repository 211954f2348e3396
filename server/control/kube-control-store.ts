/**
 * The control state in a cluster: one KinferModel object (group kinfer.io, version v1alpha1; the CRD is
 * deploy/base/gateway/kinfermodel-crd.yaml) per model, in the gateway's namespace, that every gateway
 * replica watches through a supervised informer. Operators' changes (weights, policy, drains) are the
 * object's spec; the built-in rollout's progress is its status (the status subresource), written by the
 * gateway that holds the rollout Lease (lease.ts).
 *
 * Writes are read-modify-write over the object's resourceVersion: a 409 Conflict (someone else wrote
 * first) is read again and re-applied, up to UPDATE_ATTEMPTS times, or returned as ABORTED when the caller
 * named the version it expects. While the apiserver is unreachable the gateway keeps routing on the last
 * state it saw and writes fail with UNAVAILABLE; the informer reconnects and relists by itself.
 *
 * Object names are Kubernetes names (DNS-1123); model names need not be, so the object is named after the
 * model made safe (lower case, other characters as '-', a hash suffix when that changed anything) and the
 * model's own name is `spec.model`.
 */
import { createHash } from "node:crypto";
import { ConnectError } from "@connectrpc/connect";
import {
  ApiException,
  CustomObjectsApi,
  type KubeConfig,
  type KubernetesObject,
  makeInformer,
} from "@kubernetes/client-node";
import { superviseInformer } from "../../common/kube/supervise-informer.js";
import { routingPolicySchema } from "../config/gateway-config.js";
import {
  type ControlStore,
  checkControl,
  conflictError,
  createListeners,
  EMPTY_CONTROL,
  type ModelControl,
  rolloutStateSchema,
  UPDATE_ATTEMPTS,
  unavailableError,
  type VersionedControl,
} from "./control-state.js";

export const GROUP = "kinfer.io";
export const VERSION = "v1alpha1";
export const PLURAL = "kinfermodels";
export const KIND = "KinferModel";

export interface KinferModelObject extends KubernetesObject {
  spec?: {
    model?: string;
    weights?: { version: string; weight: number }[];
    routingPolicy?: Record<string, unknown>;
    drainedReplicas?: string[];
  };
  status?: {
    rollout?: {
      fingerprint: string;
      phase: string;
      canaryWeight: number;
      failedChecks: number;
      stepStartedAt: string;
    };
  };
}

/** The object name of a model: itself when it is already a valid name, else made valid and made unique. */
export function objectName(model: string): string {
  const safe = model
    .toLowerCase()
    .replace(/[^a-z0-9-]+/g, "-")
    .replace(/^-+|-+$/g, "")
    .slice(0, 50);
  if (safe === model && safe.length > 0) return safe;
  const hash = createHash("sha256").update(model).digest("hex").slice(0, 10);
  return `${safe || "model"}-${hash}`;
}

/** A stored object as control state; throws on an object that does not validate. */
export function controlOfObject(obj: KinferModelObject): ModelControl {
  const spec = obj.spec ?? {};
  const rollout = obj.status?.rollout;
  return checkControl(spec.model ?? "", {
    ...(spec.weights !== undefined
      ? { weights: Object.fromEntries(spec.weights.map((w) => [w.version, w.weight])) }
      : {}),
    ...(spec.routingPolicy !== undefined ? { policy: routingPolicySchema.parse(spec.routingPolicy) } : {}),
    drained: spec.drainedReplicas ?? [],
    ...(rollout !== undefined
      ? {
          rollout: rolloutStateSchema.parse({ ...rollout, stepStartedAt: Date.parse(rollout.stepStartedAt) }),
        }
      : {}),
  });
}

function specOf(model: string, c: ModelControl): KinferModelObject["spec"] {
  return {
    model,
    ...(c.weights !== undefined
      ? {
          weights: Object.entries(c.weights)
            .sort(([a], [b]) => a.localeCompare(b))
            .map(([version, weight]) => ({ version, weight })),
        }
      : {}),
    ...(c.policy !== undefined ? { routingPolicy: { ...c.policy } } : {}),
    ...(c.drained.length > 0 ? { drainedReplicas: [...c.drained].sort() } : {}),
  };
}

function statusOf(c: ModelControl): KinferModelObject["status"] {
  return c.rollout === undefined
    ? {}
    : { rollout: { ...c.rollout, stepStartedAt: new Date(c.rollout.stepStartedAt).toISOString() } };
}

export interface KubeControlStoreOptions {
  namespace: string;
  /** Restart the watch when it has delivered nothing for this long. Default 5 minutes. */
  silenceMs?: number;
  log?: (message: string, fields?: Record<string, unknown>) => void;
}

export function createKubeControlStore(kc: KubeConfig, options: KubeControlStoreOptions): ControlStore {
  const { namespace } = options;
  const log = options.log ?? (() => {});
  const api = kc.makeApiClient(CustomObjectsApi);
  const base = { group: GROUP, version: VERSION, namespace, plural: PLURAL };
  const path = `/apis/${GROUP}/${VERSION}/namespaces/${namespace}/${PLURAL}`;
  const informer = makeInformer<KinferModelObject>(kc, path, () => api.listNamespacedCustomObject(base));
  /** By object name: what the informer last delivered. */
  const objects = new Map<string, { model: string; state: VersionedControl }>();
  let models = new Map<string, VersionedControl>();
  const listeners = createListeners();
  const rebuild = () => {
    models = new Map([...objects.values()].map((o) => [o.model, o.state]));
    listeners.emit();
  };
  const accept = (obj: KinferModelObject): boolean => {
    const name = obj.metadata?.name;
    const model = obj.spec?.model;
    if (name === undefined || model === undefined) return false;
    const version = obj.metadata?.resourceVersion ?? "";
    const known = objects.get(name);
    // The informer may deliver an older copy after a write of ours: keep the newer one.
    if (known !== undefined && Number(known.state.version) > Number(version)) return false;
    try {
      objects.set(name, { model, state: { control: controlOfObject(obj), version } });
      return true;
    } catch (err) {
      log("KinferModel ignored: it does not validate", { name, err: (err as Error).message });
      return false;
    }
  };
  const watch = superviseInformer("kinfermodel", informer, options.silenceMs ?? 300_000, log);
  const upsert = (obj: KinferModelObject) => {
    watch.touch();
    if (accept(obj)) rebuild();
  };
  informer.on("add", upsert);
  informer.on("update", upsert);
  informer.on("delete", (obj) => {
    watch.touch();
    if (obj.metadata?.name !== undefined && objects.delete(obj.metadata.name)) rebuild();
  });
  informer.on("connect", () => watch.touch());
  const synced = informer.start();

  const read = async (name: string): Promise<KinferModelObject | undefined> => {
    try {
      return (await api.getNamespacedCustomObject({ ...base, name })) as KinferModelObject;
    } catch (err) {
      if (err instanceof ApiException && err.code === 404) return undefined;
      throw err;
    }
  };

  return {
    kind: "kubernetes",
    synced,
    snapshot: () => models,
    async update(model, change, expectedVersion) {
      const name = objectName(model);
      for (let attempt = 1; ; attempt++) {
        try {
          const stored = await read(name);
          const version = stored?.metadata?.resourceVersion ?? "";
          if (expectedVersion !== undefined && expectedVersion !== version)
            throw conflictError(model, `it is at version ${version || "(none)"}, not ${expectedVersion}`);
          if (stored !== undefined && stored.spec?.model !== model)
            throw unavailableError(
              "kubernetes",
              new Error(`${name} belongs to model "${stored.spec?.model}"`),
            );
          const current = stored === undefined ? EMPTY_CONTROL : controlOfObject(stored);
          const next = checkControl(model, change(current));
          let written: KinferModelObject;
          const spec = specOf(model, next);
          if (stored === undefined) {
            written = (await api.createNamespacedCustomObject({
              ...base,
              body: { apiVersion: `${GROUP}/${VERSION}`, kind: KIND, metadata: { name, namespace }, spec },
            })) as KinferModelObject;
          } else if (JSON.stringify(spec) !== JSON.stringify(specOf(model, current))) {
            written = (await api.replaceNamespacedCustomObject({
              ...base,
              name,
              body: { ...stored, spec },
            })) as KinferModelObject;
          } else written = stored;
          const status = statusOf(next);
          if (
            JSON.stringify(status) !==
            JSON.stringify(statusOf(stored === undefined ? EMPTY_CONTROL : current))
          ) {
            written = (await api.replaceNamespacedCustomObjectStatus({
              ...base,
              name,
              body: { ...written, status },
            })) as KinferModelObject;
          }
          if (accept(written)) rebuild();
          return { control: next, version: written.metadata?.resourceVersion ?? "" };
        } catch (err) {
          if (err instanceof ConnectError) throw err;
          const conflict = err instanceof ApiException && err.code === 409;
          if (conflict && expectedVersion !== undefined) throw conflictError(model, "a concurrent write");
          if (conflict && attempt < UPDATE_ATTEMPTS) continue;
          if (conflict) throw conflictError(model, `${UPDATE_ATTEMPTS} concurrent writes in a row`);
          throw unavailableError(
            "kubernetes",
            err instanceof ApiException ? `${err.code}: ${JSON.stringify(err.body)}` : err,
          );
        }
      }
    },
    onChange: (l) => listeners.add(l),
    async close() {
      await watch.stop();
    },
  };
}
