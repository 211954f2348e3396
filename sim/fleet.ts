/**
 * Starts several simulated replicas of several models in one process: what `npm start`, the integration
 * tests and the benchmarks use. Replicas of a model get consecutive ports from `basePort` (models in the
 * order given), or free ports when basePort is 0.
 */
import type { EngineOptions } from "./engine/engine-options.js";
import type { FaultRates } from "./faults/faults.js";
import { type SimServer, startSimServer } from "./http/sim-server.js";

/** What to start. */
export interface FleetOptions {
  /** Served model names; each gets `replicas` replicas. */
  models: readonly string[];
  /** Replicas per model. Default 1. */
  replicas?: number;
  /** First port; 0 picks free ports. Default 0. */
  basePort?: number;
  /** Listen address. Default 127.0.0.1. */
  host?: string;
  /** Engine parameters for every replica. */
  engine?: Partial<EngineOptions>;
  /** Fault rates for every replica. */
  faults?: Partial<FaultRates>;
  /** Start-up delay of every replica's /health. */
  startupDelayMs?: number;
  /** Seed; replica i uses seed + i for its fault dice. Default 1. */
  seed?: number;
  /** OTLP/HTTP endpoint for every replica's request spans (vLLM's --otlp-traces-endpoint). */
  otlpTracesEndpoint?: string;
  /** LoRA adapters (vLLM's --enable-lora), and those every replica loads at start (--lora-modules). */
  enableLora?: boolean;
  loraModules?: Readonly<Record<string, string>>;
}

/** Running replicas. */
export interface Fleet {
  readonly replicas: readonly SimServer[];
  /** The replicas of one model. */
  of(model: string): SimServer[];
  close(): Promise<void>;
}

export async function startFleet(options: FleetOptions): Promise<Fleet> {
  const perModel = options.replicas ?? 1;
  if (!Number.isInteger(perModel) || perModel < 1 || perModel > 256) {
    throw new RangeError("replicas must be an integer from 1 to 256");
  }
  if (options.models.length === 0) throw new RangeError("at least one model is needed");
  if (new Set(options.models).size !== options.models.length) throw new RangeError("a model is named twice");
  const replicas: SimServer[] = [];
  try {
    let i = 0;
    for (const model of options.models) {
      for (let r = 0; r < perModel; r++, i++) {
        replicas.push(
          await startSimServer({
            model,
            host: options.host ?? "127.0.0.1",
            port: options.basePort ? options.basePort + i : 0,
            ...(options.engine !== undefined ? { engine: options.engine } : {}),
            ...(options.faults !== undefined ? { faults: options.faults } : {}),
            ...(options.startupDelayMs !== undefined ? { startupDelayMs: options.startupDelayMs } : {}),
            seed: (options.seed ?? 1) + i,
            ...(options.otlpTracesEndpoint !== undefined
              ? { otlpTracesEndpoint: options.otlpTracesEndpoint }
              : {}),
            ...(options.enableLora !== undefined ? { enableLora: options.enableLora } : {}),
            ...(options.loraModules !== undefined ? { loraModules: options.loraModules } : {}),
          }),
        );
      }
    }
  } catch (err) {
    await Promise.all(replicas.map((r) => r.close()));
    throw err;
  }
  return {
    replicas,
    of: (model) => replicas.filter((r) => r.model === model),
    close: async () => {
      await Promise.all(replicas.map((r) => r.close()));
    },
  };
}
