/**
 * kinfer-sim: runs simulated vLLM replicas on this machine.
 *
 *   kinfer-sim --replicas 3 --base-port 8001 --model llama-3-8b --model qwen-2.5-7b
 *
 * Every engine parameter and fault rate is a flag (`--help` lists them with their defaults). Bad flags
 * are reported by name and the process exits with status 2. SIGINT and SIGTERM close the replicas.
 */
import { parseArgs } from "node:util";
import { z } from "zod";
import { isEntryPoint, runProgram, stopOnSignal } from "../common/process/program.js";
import { defaultEngineOptions, type EngineOptions } from "./engine/engine-options.js";
import { type FaultRates, noFaults } from "./faults/faults.js";
import { startFleet } from "./fleet.js";

/** Engine option -> flag name. */
const ENGINE_FLAGS: Record<Exclude<keyof EngineOptions, "enablePrefixCaching">, string> = {
  maxNumSeqs: "max-num-seqs",
  maxNumBatchedTokens: "max-num-batched-tokens",
  blockSize: "block-size",
  numGpuBlocks: "num-gpu-blocks",
  maxModelLen: "max-model-len",
  prefillOverheadMs: "prefill-overhead-ms",
  prefillMsPerToken: "prefill-ms-per-token",
  decodeBaseMs: "decode-base-ms",
  decodeMsPerSeq: "decode-ms-per-seq",
  meanOutputTokens: "mean-output-tokens",
  slowdown: "slowdown",
};

/** Fault rate -> flag name. */
const FAULT_FLAGS: Record<keyof FaultRates, string> = {
  refuse: "fault-refuse-rate",
  status: "fault-status-rate",
  statusCode: "fault-status-code",
  errorMidStream: "fault-error-rate",
  drop: "fault-drop-rate",
  afterTokens: "fault-after-tokens",
  stall: "fault-stall-rate",
  stallMs: "fault-stall-ms",
  stallAfterTokens: "fault-stall-after-tokens",
};

const HELP = `kinfer-sim: simulated vLLM replicas (OpenAI API, vLLM metrics, batching and KV-cache model, faults)

  --model NAME              served model name; repeat for several models (default: llama-3-8b)
  --replicas N              replicas per model (default 1)
  --base-port PORT          first port, consecutive after it; 0 picks free ports (default 8001)
  --host ADDR               listen address (default 127.0.0.1)
  --startup-delay-ms MS     /health answers 503 for this long after start (default 0)
  --seed N                  seed of the fault dice (default 1)
  --no-prefix-caching       disable prefix caching
${Object.entries(ENGINE_FLAGS)
  .map(([key, flag]) => `  --${flag.padEnd(24)}default ${defaultEngineOptions[key as keyof EngineOptions]}`)
  .join("\n")}
${Object.entries(FAULT_FLAGS)
  .map(([key, flag]) => `  --${flag.padEnd(24)}default ${noFaults[key as keyof FaultRates]}`)
  .join("\n")}
`;

/** Parses a numeric flag; throws naming the flag. */
function numberFlag(flag: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (value.trim() === "" || !Number.isFinite(n))
    throw new Error(`--${flag}: expected a number, got "${value}"`);
  return n;
}

export async function main(argv: string[]): Promise<void> {
  const numeric = [...Object.values(ENGINE_FLAGS), ...Object.values(FAULT_FLAGS)];
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      model: { type: "string", multiple: true },
      replicas: { type: "string" },
      "base-port": { type: "string" },
      host: { type: "string" },
      "startup-delay-ms": { type: "string" },
      seed: { type: "string" },
      "no-prefix-caching": { type: "boolean" },
      help: { type: "boolean", short: "h" },
      ...Object.fromEntries(numeric.map((f) => [f, { type: "string" as const }])),
    },
  });
  if (values.help) {
    process.stdout.write(HELP);
    return;
  }
  const flag = (name: string) => (values as Record<string, string | undefined>)[name];
  const engine: Partial<EngineOptions> = {};
  for (const [key, name] of Object.entries(ENGINE_FLAGS)) {
    const n = numberFlag(name, flag(name));
    if (n !== undefined) (engine as Record<string, number>)[key] = n;
  }
  if (values["no-prefix-caching"]) engine.enablePrefixCaching = false;
  const faults: Partial<FaultRates> = {};
  for (const [key, name] of Object.entries(FAULT_FLAGS)) {
    const n = numberFlag(name, flag(name));
    if (n !== undefined) (faults as Record<string, number>)[key] = n;
  }
  const fleet = await startFleet({
    models: values.model ?? ["llama-3-8b"],
    replicas: numberFlag("replicas", values.replicas) ?? 1,
    basePort: numberFlag("base-port", values["base-port"]) ?? 8001,
    host: values.host ?? "127.0.0.1",
    engine,
    faults,
    startupDelayMs: numberFlag("startup-delay-ms", values["startup-delay-ms"]) ?? 0,
    seed: numberFlag("seed", values.seed) ?? 1,
  });
  for (const r of fleet.replicas) console.log(`kinfer-sim: ${r.model} at ${r.url}`);
  console.log("kinfer-sim: ready");
  stopOnSignal(() => fleet.close());
}

/** Names zod's option paths as flags, so that an error points at what the user typed. */
function explain(err: unknown): string {
  if (err instanceof z.ZodError) {
    return err.issues
      .map((issue) => {
        const key = String(issue.path[0] ?? "");
        const name =
          ENGINE_FLAGS[key as keyof typeof ENGINE_FLAGS] ?? FAULT_FLAGS[key as keyof FaultRates] ?? key;
        return `--${name}: ${issue.message}`;
      })
      .join("\n");
  }
  return err instanceof Error ? err.message : String(err);
}

if (isEntryPoint(import.meta.url)) runProgram("kinfer-sim", () => main(process.argv.slice(2)), explain);
