/**
 * Static discovery: the replica URLs listed under each model version in the config file. The gateway
 * calls `update` when the file is reloaded; listeners then see the new endpoints.
 */
import type { GatewayConfig } from "../config/gateway-config.js";
import type { Endpoint, EndpointSource } from "./endpoint-source.js";

export interface StaticSource extends EndpointSource {
  /** Replaces the endpoints with those of a (reloaded) config. */
  update(config: GatewayConfig): void;
}

function endpointsOf(config: GatewayConfig): Endpoint[] {
  return config.models.flatMap((model) =>
    model.versions.flatMap((version) =>
      version.replicas.map((url) => ({ model: model.name, version: version.name, url, ready: true })),
    ),
  );
}

export function createStaticSource(config: GatewayConfig): StaticSource {
  let current = endpointsOf(config);
  const listeners = new Set<() => void>();
  return {
    name: "static",
    endpoints: () => current,
    onChange(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    update(next) {
      current = endpointsOf(next);
      for (const listener of listeners) listener();
    },
    close: async () => {
      listeners.clear();
    },
  };
}
