/**
 * A gateway in front of simulated replicas, all on 127.0.0.1 with free ports, for integration tests.
 * Replicas run in this process (real HTTP servers, real sockets); tests change them through their /sim/
 * endpoints exactly as an operator would.
 */
import { type GatewayConfig, parseGatewayConfig } from "../../server/config/gateway-config.js";
import { type Gateway, startGateway } from "../../server/gateway.js";
import type { EngineOptions } from "../../sim/engine/engine-options.js";
import { type SimServer, type SimServerOptions, startSimServer } from "../../sim/http/sim-server.js";
import { postJson } from "./sse.js";

export interface HarnessOptions {
  /** model -> version -> number of replicas */
  models: Record<string, Record<string, number>>;
  /** Version weights (default 1 each). */
  weights?: Record<string, Record<string, number>>;
  /** Extra config per model (e.g. rollout), merged into its entry. */
  modelConfig?: Record<string, Record<string, unknown>>;
  /** Extra gateway config, merged over the defaults (shallowly per section). */
  config?: Record<string, unknown>;
  engine?: Partial<EngineOptions>;
  /** Engine options of one model's replicas, over `engine`. */
  modelEngine?: Record<string, Partial<EngineOptions>>;
  /** Other options of every simulated replica (e.g. otlpTracesEndpoint). */
  sim?: Omit<SimServerOptions, "model" | "engine">;
}

export interface Harness {
  readonly gateway: Gateway;
  readonly url: string;
  /** Replicas by "model/version". */
  readonly replicas: ReadonlyMap<string, SimServer[]>;
  all(): SimServer[];
  /** Sets fault rates on replicas through POST /sim/faults. */
  setFaults(replicas: readonly SimServer[], rates: Record<string, number>): Promise<void>;
  close(): Promise<void>;
}

export async function startHarness(options: HarnessOptions): Promise<Harness> {
  const replicas = new Map<string, SimServer[]>();
  const models = [];
  for (const [model, versions] of Object.entries(options.models)) {
    const vs = [];
    for (const [version, count] of Object.entries(versions)) {
      const list: SimServer[] = [];
      for (let i = 0; i < count; i++) {
        // Long natural replies by default, so that max_tokens decides every stream's length.
        list.push(
          await startSimServer({
            ...options.sim,
            model,
            engine: { meanOutputTokens: 100_000, ...options.engine, ...options.modelEngine?.[model] },
          }),
        );
      }
      replicas.set(`${model}/${version}`, list);
      vs.push({
        name: version,
        weight: options.weights?.[model]?.[version] ?? 1,
        replicas: list.map((r) => r.url),
      });
    }
    models.push({ name: model, maxContextTokens: 8192, versions: vs, ...options.modelConfig?.[model] });
  }
  const extra = options.config ?? {};
  const config: GatewayConfig = parseGatewayConfig({
    logLevel: "silent",
    ...extra,
    listen: { host: "127.0.0.1", port: 0 },
    scrape: { intervalMs: 50, timeoutMs: 500, ...(extra.scrape as object | undefined) },
    models,
  });
  const gateway = await startGateway({ config });
  await gateway.scrapeNow();
  const all = () => [...replicas.values()].flat();
  return {
    gateway,
    url: gateway.url,
    replicas,
    all,
    async setFaults(list, rates) {
      for (const r of list) {
        const res = await postJson(`${r.url}/sim/faults`, rates);
        if (res.status !== 200) throw new Error(`setFaults: ${await res.text()}`);
      }
    },
    async close() {
      await gateway.close();
      await Promise.all(all().map((r) => r.close()));
    },
  };
}
