/**
 * kinfer-sim: simulated vLLM servers on this machine, with vLLM's command line where it has one.
 *
 *   kinfer-sim --port 8000 --model meta-llama/Meta-Llama-3-8B --served-model-name llama-3-8b
 *   kinfer-sim --replicas 3 --base-port 8001 --model llama-3-8b --model qwen-2.5-7b
 *
 * One server, as `vllm serve` starts it: `--port` (and `--host`), `--model` (or the model as the first
 * argument), `--served-model-name`, `--max-model-len`, `--max-num-seqs`, `--max-num-batched-tokens`,
 * `--block-size`, `--[no-]enable-prefix-caching`. A fleet: several `--model`s, `--replicas` each, on
 * consecutive ports from `--base-port`. Every engine parameter and fault rate is a flag (`--help` lists
 * them with their defaults). Bad flags are reported by name and the process exits with status 2.
 * SIGINT and SIGTERM close the servers. With `--shutdown-timeout N` (vLLM 0.18 and later), they drain
 * first, as vLLM does: new requests get 503 while the running ones finish, for up to N seconds. Flags of
 * vLLM that the simulator has no use for are accepted and ignored when deploy/'s manifests pass them
 * (`--tensor-parallel-size`, `--disable-uvicorn-access-log`), so that the cluster tests run the model
 * Deployments' command lines unchanged.
 */
import { parseArgs } from "node:util";
import { z } from "zod";
import { isEntryPoint, runProgram, stopOnSignal } from "../common/process/program.js";
import { defaultEngineOptions, type EngineOptions } from "./engine/engine-options.js";
import { type FaultRates, noFaults } from "./faults/faults.js";
import { startFleet } from "./fleet.js";
import type { SimServer } from "./http/sim-server.js";

type NumericEngineOption = Exclude<keyof EngineOptions, "enablePrefixCaching">;

/** Engine option -> flag name (vLLM's spelling where vLLM has the flag), argument and meaning. */
const ENGINE_FLAGS: Record<NumericEngineOption, readonly [flag: string, arg: string, help: string]> = {
  maxNumSeqs: ["max-num-seqs", "N", "most sequences in a batch (vLLM)"],
  maxNumBatchedTokens: ["max-num-batched-tokens", "N", "token budget of one engine step (vLLM)"],
  blockSize: ["block-size", "N", "tokens per KV-cache block (vLLM)"],
  numGpuBlocks: ["num-gpu-blocks", "N", "KV-cache blocks (vLLM's --num-gpu-blocks-override)"],
  maxModelLen: ["max-model-len", "N", "context length, prompt plus output (vLLM)"],
  prefillOverheadMs: ["prefill-overhead-ms", "MS", "fixed cost of a step that starts prefills"],
  prefillMsPerToken: ["prefill-ms-per-token", "MS", "prefill cost per uncached prompt token"],
  decodeBaseMs: ["decode-base-ms", "MS", "fixed cost of an engine step"],
  decodeMsPerSeq: ["decode-ms-per-seq", "MS", "cost per sequence in the batch per step"],
  meanOutputTokens: ["mean-output-tokens", "N", "mean length of a reply that ends by itself"],
  slowdown: ["slowdown", "F", "multiplies every step's duration"],
  embeddingSize: ["embedding-size", "N", "length of the vectors /v1/embeddings returns"],
  maxLoras: ["max-loras", "N", "most LoRA adapters in one batch (vLLM; default 1)"],
  loraLoadMs: ["lora-load-ms", "MS", "time to load an adapter into a batch slot"],
};

/** Fault rate -> flag name, argument and meaning. */
const FAULT_FLAGS: Record<keyof FaultRates, readonly [flag: string, arg: string, help: string]> = {
  refuse: ["fault-refuse-rate", "P", "share of requests whose connection is reset"],
  status: ["fault-status-rate", "P", "share answered --fault-status-code before the first token"],
  statusCode: ["fault-status-code", "CODE", "the status of --fault-status-rate"],
  errorMidStream: ["fault-error-rate", "P", "share that fail in-band after --fault-after-tokens"],
  drop: ["fault-drop-rate", "P", "share whose connection drops after --fault-after-tokens"],
  afterTokens: ["fault-after-tokens", "N", "tokens before an in-band error or a drop"],
  stall: ["fault-stall-rate", "P", "share that stall for --fault-stall-ms"],
  stallMs: ["fault-stall-ms", "MS", "how long a stall lasts"],
  stallAfterTokens: ["fault-stall-after-tokens", "N", "tokens sent before a stall"],
};

/** One help line: flag and argument, then the text, in aligned columns. */
const line = (flag: string, text: string) => `  ${flag.padEnd(32)} ${text}`;

const HELP = `kinfer-sim: simulated vLLM servers (OpenAI API, vLLM metrics, batching and KV-cache model, faults)

usage: kinfer-sim [MODEL] [--port PORT] [--served-model-name NAME] [options]     one server, as vllm serve
       kinfer-sim --model NAME [--model NAME ...] --replicas N --base-port PORT  a fleet

${line("--model NAME", "model; repeat for several (default: llama-3-8b)")}
${line("--served-model-name NAME", "the name clients use (default: the model); one server only")}
${line("--port PORT", "one server on this port (vLLM); 0 picks a free port")}
${line("--replicas N", "servers per model, for a fleet (default 1)")}
${line("--base-port PORT", "a fleet's first port, consecutive after it (default 8001)")}
${line("--host ADDR", "listen address (default 127.0.0.1)")}
${line("--startup-delay-ms MS", "/health answers 503 for this long after start (default 0)")}
${line("--seed N", "seed of the fault dice (default 1)")}
${line("--shutdown-timeout S", "on SIGTERM, drain: running requests get S seconds (default 0: abort)")}
${line("--otlp-traces-endpoint URL", "a span per request under its traceparent, to this OTLP/HTTP collector")}
${line("--enable-lora", "serve LoRA adapters (requests name one as their model; load/unload endpoints)")}
${line("--lora-modules NAME=PATH", "an adapter loaded at start; repeat for several (needs --enable-lora)")}
${line("--tensor-parallel-size N", "accepted and ignored (vLLM)")}
${line("--disable-uvicorn-access-log", "accepted and ignored (vLLM)")}
${line("--[no-]enable-prefix-caching", "keep finished prompts' KV blocks for reuse (default on)")}
${Object.entries(ENGINE_FLAGS)
  .map(([key, [flag, arg, help]]) =>
    line(`--${flag} ${arg}`, `${help} (default ${defaultEngineOptions[key as NumericEngineOption]})`),
  )
  .join("\n")}
${Object.entries(FAULT_FLAGS)
  .map(([key, [flag, arg, help]]) =>
    line(`--${flag} ${arg}`, `${help} (default ${noFaults[key as keyof FaultRates]})`),
  )
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
  const numeric = [...Object.values(ENGINE_FLAGS), ...Object.values(FAULT_FLAGS)].map(([flag]) => flag);
  const { values, positionals } = parseArgs({
    args: argv,
    strict: true,
    allowPositionals: true,
    options: {
      model: { type: "string", multiple: true },
      "served-model-name": { type: "string" },
      port: { type: "string" },
      replicas: { type: "string" },
      "base-port": { type: "string" },
      host: { type: "string" },
      "startup-delay-ms": { type: "string" },
      seed: { type: "string" },
      "shutdown-timeout": { type: "string" },
      "otlp-traces-endpoint": { type: "string" },
      "enable-lora": { type: "boolean" },
      "lora-modules": { type: "string", multiple: true },
      "tensor-parallel-size": { type: "string" },
      "disable-uvicorn-access-log": { type: "boolean" },
      "enable-prefix-caching": { type: "boolean" },
      "no-enable-prefix-caching": { type: "boolean" },
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
  for (const [key, [name]] of Object.entries(ENGINE_FLAGS)) {
    const n = numberFlag(name, flag(name));
    if (n !== undefined) (engine as Record<string, number>)[key] = n;
  }
  if (values["no-prefix-caching"] || values["no-enable-prefix-caching"]) engine.enablePrefixCaching = false;
  const faults: Partial<FaultRates> = {};
  for (const [key, [name]] of Object.entries(FAULT_FLAGS)) {
    const n = numberFlag(name, flag(name));
    if (n !== undefined) (faults as Record<string, number>)[key] = n;
  }
  if (values["lora-modules"] !== undefined && !values["enable-lora"])
    throw new Error("--lora-modules needs --enable-lora");
  if (positionals.length > 1) throw new Error(`one model as an argument, got: ${positionals.join(" ")}`);
  const models = [...positionals, ...(values.model ?? [])];
  const servedName = values["served-model-name"];
  const single = values.port !== undefined || servedName !== undefined;
  if (single) {
    // One server, as `vllm serve MODEL --port PORT --served-model-name NAME` starts it.
    if (models.length > 1)
      throw new Error("--port and --served-model-name start one server: give one --model");
    if (values.replicas !== undefined || values["base-port"] !== undefined)
      throw new Error("--port starts one server; --replicas and --base-port are for a fleet");
  }
  const fleet = await startFleet({
    models: single ? [servedName ?? models[0] ?? "llama-3-8b"] : models.length > 0 ? models : ["llama-3-8b"],
    replicas: single ? 1 : (numberFlag("replicas", values.replicas) ?? 1),
    basePort: single
      ? (numberFlag("port", values.port) ?? 8000)
      : (numberFlag("base-port", values["base-port"]) ?? 8001),
    host: values.host ?? "127.0.0.1",
    engine,
    faults,
    startupDelayMs: numberFlag("startup-delay-ms", values["startup-delay-ms"]) ?? 0,
    seed: numberFlag("seed", values.seed) ?? 1,
    ...(values["otlp-traces-endpoint"] !== undefined
      ? { otlpTracesEndpoint: values["otlp-traces-endpoint"] }
      : {}),
    ...(values["enable-lora"]
      ? { enableLora: true, loraModules: loraModules(values["lora-modules"] ?? []) }
      : {}),
  });
  const shutdownTimeoutS = numberFlag("shutdown-timeout", values["shutdown-timeout"]) ?? 0;
  if (shutdownTimeoutS < 0) throw new Error("--shutdown-timeout: seconds, 0 or more");
  for (const r of fleet.replicas) console.log(`kinfer-sim: ${r.model} at ${r.url}`);
  console.log("kinfer-sim: ready");
  stopOnSignal(async () => {
    if (shutdownTimeoutS > 0) await drain(fleet.replicas, shutdownTimeoutS * 1000);
    await fleet.close();
  });
}

/**
 * vLLM's drain shutdown: refuse new requests (503, through the server's own drain control) and wait until
 * no sequence runs or waits, or `timeoutMs` passes; then the caller closes, aborting what is left.
 */
async function drain(replicas: readonly SimServer[], timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  await Promise.all(
    replicas.map((r) =>
      fetch(`${r.url}/sim/drain`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ draining: true }),
      }).then((res) => res.body?.cancel()),
    ),
  );
  const busy = () =>
    replicas.some((r) => {
      const stats = r.engine.stats();
      return stats.running + stats.waiting > 0;
    });
  while (busy() && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
  // The last tokens and the end of their streams are written; let them leave before the sockets close.
  await new Promise((r) => setTimeout(r, 200));
}

/** Names zod's option paths as flags, so that an error points at what the user typed. */
function explain(err: unknown): string {
  if (err instanceof z.ZodError) {
    return err.issues
      .map((issue) => {
        const key = String(issue.path[0] ?? "");
        const name =
          ENGINE_FLAGS[key as NumericEngineOption]?.[0] ?? FAULT_FLAGS[key as keyof FaultRates]?.[0] ?? key;
        return `--${name}: ${issue.message}`;
      })
      .join("\n");
  }
  return err instanceof Error ? err.message : String(err);
}

if (isEntryPoint(import.meta.url)) runProgram("kinfer-sim", () => main(process.argv.slice(2)), explain);

/** vLLM's --lora-modules NAME=PATH values, as name -> path. */
function loraModules(values: readonly string[]): Record<string, string> {
  const modules: Record<string, string> = {};
  for (const v of values) {
    const at = v.indexOf("=");
    if (at <= 0 || at === v.length - 1)
      throw new Error(`--lora-modules: NAME=PATH, got ${JSON.stringify(v)}`);
    modules[v.slice(0, at)] = v.slice(at + 1);
  }
  return modules;
}
