/**
 * What a reloaded config changes in a running gateway. Most keys take effect at once (models, weights,
 * routing, timeouts, request limits, CORS, the log level, the admin token, TLS certificates); the rest
 * shape things built once at start (listeners and their connection limits, discovery, the scraper, the
 * key store's file, the retry budget, outlier detection, the prefix index) and need a restart. A reload
 * keeps the running value of every restart-only key, so that the config the gateway reports is the one in
 * force, and says which keys it applied and which it did not.
 */
import type { GatewayConfig } from "./gateway-config.js";

/** Keys (or whole sections) whose change takes effect only at the next start. */
export const RESTART_ONLY: readonly string[] = [
  "listen.host",
  "listen.port",
  "listen.tls",
  "limits.maxConcurrentStreams",
  "limits.maxResponseBytes",
  "limits.maxTimeoutMs",
  "connections",
  "scrape",
  "discovery",
  "admin.host",
  "admin.port",
  "admin.tls",
  "tenants",
  "control",
  "prefixIndex",
  "logFormat",
  "retry.budgetRatio",
  "retry.minRetries",
  "ejection",
  "tracing",
];

export interface ReloadPlan {
  /** The config to run: the new one, with restart-only keys as they are now. */
  readonly config: GatewayConfig;
  /** Keys whose new values take effect now. */
  readonly applied: readonly string[];
  /** Keys that changed in the file but keep their running values until a restart. */
  readonly notApplied: readonly string[];
}

type Json = Record<string, unknown>;

const get = (o: unknown, path: string): unknown =>
  path
    .split(".")
    .reduce<unknown>((v, k) => (v === null || typeof v !== "object" ? undefined : (v as Json)[k]), o);

function set(o: Json, path: string, value: unknown): void {
  const keys = path.split(".");
  let target = o;
  for (const k of keys.slice(0, -1)) {
    if (target[k] === null || typeof target[k] !== "object") target[k] = {};
    target = target[k] as Json;
  }
  const last = keys.at(-1) as string;
  if (value === undefined) delete target[last];
  else target[last] = value;
}

/** Leaf paths of a config (objects descended into; arrays and scalars are leaves). */
function leaves(o: unknown, prefix = ""): string[] {
  if (o === null || typeof o !== "object" || Array.isArray(o)) return [prefix];
  return Object.entries(o as Json).flatMap(([k, v]) => leaves(v, prefix === "" ? k : `${prefix}.${k}`));
}

const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);

export function planReload(running: GatewayConfig, next: GatewayConfig): ReloadPlan {
  const config = structuredClone(next) as unknown as Json;
  const notApplied: string[] = [];
  // A section switched on or off (admin, tenants) is a restart as a whole.
  for (const section of ["admin", "tenants"] as const) {
    if ((running[section] === undefined) !== (next[section] === undefined)) {
      notApplied.push(section);
      set(config, section, structuredClone(running[section]));
    }
  }
  for (const key of RESTART_ONLY) {
    if (notApplied.some((k) => key === k || key.startsWith(`${k}.`))) continue;
    const was = get(running, key);
    if (!same(was, get(next, key))) {
      notApplied.push(key);
      set(config, key, structuredClone(was));
    }
  }
  const paths = new Set([...leaves(running), ...leaves(next)]);
  const applied = [...paths]
    .filter((p) => !same(get(running, p), get(next, p)))
    .filter((p) => !notApplied.some((k) => p === k || p.startsWith(`${k}.`)))
    .sort();
  return { config: config as unknown as GatewayConfig, applied, notApplied };
}
