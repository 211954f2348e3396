/**
 * The routing table: which models the gateway serves, their versions with traffic weights, each model's
 * routing policy, and the replicas of every version. It is rebuilt from the config (models, weights,
 * policies) and the EndpointSource (replicas) whenever either changes, and overlaid with the control
 * state (server/control/: operators' traffic splits, policies and drains) whenever that changes; Replica
 * objects survive rebuilds, so in-flight counts, signals and ejections are kept. Readers get the current
 * table by reference and never see a half-applied change.
 */
import { effectivePolicy, type GatewayConfig, type RoutingPolicyConfig } from "../config/gateway-config.js";
import type { ModelControl } from "../control/control-state.js";
import type { Endpoint } from "../discovery/endpoint-source.js";
import { createReplica, type Replica } from "../replicas/replica.js";

export interface VersionEntry {
  readonly name: string;
  /** Relative share of traffic. */
  readonly weight: number;
  /** The model name its replicas serve (sent upstream as `model`). */
  readonly servedModelName: string;
  readonly replicas: readonly Replica[];
}

export interface ModelEntry {
  readonly name: string;
  readonly maxContextTokens: number;
  /** LoRA adapters every replica serves (config `adapters`). */
  readonly adapters: readonly string[];
  /** Learn each replica's adapters from its /v1/models (config `discoverAdapters`). */
  readonly discoverAdapters: boolean;
  readonly policy: RoutingPolicyConfig;
  /** Sorted by name. */
  readonly versions: readonly VersionEntry[];
}

/** A model's LoRA adapters: declared, and those its replicas have (loaded or discovered), sorted. */
export function adaptersOf(model: ModelEntry): string[] {
  const names = new Set(model.adapters);
  for (const v of model.versions) for (const r of v.replicas) for (const a of r.adapters) names.add(a);
  return [...names].sort();
}

export interface RoutingTable {
  /** The model, or undefined if it is not served. */
  model(name: string): ModelEntry | undefined;
  /**
   * The model a LoRA adapter belongs to: declared in its config, or served by one of its replicas (loaded
   * through the admin API, or discovered); undefined when no model has it.
   */
  modelOfAdapter(adapter: string): ModelEntry | undefined;
  /** Every model, sorted by name. */
  models(): readonly ModelEntry[];
  /** Every replica of every model. */
  replicas(): readonly Replica[];
  /** Rebuilds from a config and the current endpoints. */
  apply(config: GatewayConfig, endpoints: readonly Endpoint[], source: string): void;
  /**
   * Applies the control state of every model (replacing what was applied before): weights and policies
   * override the config's; drained replicas take no new requests. Versions a split does not name get 0.
   */
  setControl(control: ReadonlyMap<string, ModelControl>): void;
  /** Calls `listener` after every change. */
  onChange(listener: () => void): () => void;
}

export function createRoutingTable(): RoutingTable {
  let models = new Map<string, ModelEntry>();
  const replicasByKey = new Map<string, Replica>();
  /** The control state's overrides, kept across config reloads. */
  let control: ReadonlyMap<string, ModelControl> = new Map();
  const listeners = new Set<() => void>();
  const changed = () => {
    for (const l of listeners) l();
  };

  function withOverrides(entry: ModelEntry): ModelEntry {
    const c = control.get(entry.name);
    const drained = new Set(c?.drained ?? []);
    for (const v of entry.versions) for (const r of v.replicas) r.draining = drained.has(r.id);
    if (c === undefined) return entry;
    const weights = c.weights;
    return {
      ...entry,
      policy: c.policy ?? entry.policy,
      versions: entry.versions.map((v) => ({
        ...v,
        weight: weights === undefined ? v.weight : (weights[v.name] ?? 0),
      })),
    };
  }

  let base = new Map<string, ModelEntry>();

  function rebuild() {
    models = new Map([...base].map(([name, entry]) => [name, withOverrides(entry)]));
    changed();
  }

  return {
    model: (name) => models.get(name),
    modelOfAdapter(adapter) {
      // A declared adapter belongs to the model that declares it, whatever a replica elsewhere reports.
      for (const m of models.values()) if (m.adapters.includes(adapter)) return m;
      for (const m of models.values())
        for (const v of m.versions) if (v.replicas.some((r) => r.adapters.has(adapter))) return m;
      return undefined;
    },
    models: () => [...models.values()],
    replicas: () => [...models.values()].flatMap((m) => m.versions.flatMap((v) => v.replicas)),
    apply(config, endpoints, source) {
      const byVersion = new Map<string, Endpoint[]>();
      for (const e of endpoints) {
        const key = `${e.model}\u0000${e.version}`;
        byVersion.set(key, [...(byVersion.get(key) ?? []), e]);
      }
      const seen = new Set<string>();
      const next = new Map<string, ModelEntry>();
      for (const model of [...config.models].sort((a, b) => a.name.localeCompare(b.name))) {
        const versions = [...model.versions]
          .sort((a, b) => a.name.localeCompare(b.name))
          .map((version) => {
            const replicas = (byVersion.get(`${model.name}\u0000${version.name}`) ?? []).map((e) => {
              const key = `${model.name}\u0000${version.name}\u0000${e.url}`;
              seen.add(key);
              let replica = replicasByKey.get(key);
              if (replica === undefined) {
                replica = createReplica(model.name, version.name, e.url, source);
                replicasByKey.set(key, replica);
              }
              replica.ready = e.ready;
              replica.source = source;
              return replica;
            });
            return {
              name: version.name,
              weight: version.weight,
              servedModelName: version.servedModelName ?? model.name,
              replicas,
            };
          });
        next.set(model.name, {
          name: model.name,
          maxContextTokens: model.maxContextTokens,
          adapters: model.adapters,
          discoverAdapters: model.discoverAdapters,
          policy: effectivePolicy(config, model),
          versions,
        });
      }
      for (const key of [...replicasByKey.keys()]) if (!seen.has(key)) replicasByKey.delete(key);
      base = next;
      rebuild();
    },
    setControl(next) {
      control = next;
      rebuild();
    },
    onChange(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
  };
}
