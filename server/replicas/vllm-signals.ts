/**
 * Reads the load signals routing needs from a vLLM /metrics page (Prometheus text format). Only three
 * gauges matter, so this is a small line reader rather than a full exposition-format parser (none of the
 * JavaScript parsers on npm is maintained): it sums each gauge over its label sets (one per engine when
 * vLLM runs data-parallel), taking the largest KV usage, and ignores everything else.
 */

export interface VllmSignals {
  readonly waiting: number;
  readonly running: number;
  readonly kvCacheUsage: number;
  /**
   * LoRA adapters of its running and waiting requests, and its adapter slots (vllm:lora_requests_info,
   * newest label set); absent when the replica serves no adapters.
   */
  readonly lora?: {
    readonly running: readonly string[];
    readonly waiting: readonly string[];
    readonly max: number;
  };
}

const LORA = "vllm:lora_requests_info";
/** Most adapters read from one label (a replica's batch holds --max-loras of them; this bounds a bad one). */
const MAX_LORA_NAMES = 256;

const WAITING = "vllm:num_requests_waiting";
const RUNNING = "vllm:num_requests_running";
const KV = "vllm:kv_cache_usage_perc";
const KV_OLD = "vllm:gpu_cache_usage_perc";
const NAMES = [WAITING, RUNNING, KV, KV_OLD];

/** The sample value of a line `name{labels} value [timestamp]`, or NaN. */
function sampleValue(line: string, nameLength: number): number {
  let i = nameLength;
  if (line[i] === "{") {
    // Label values may contain "}" inside quotes: skip quoted strings.
    let quoted = false;
    for (i++; i < line.length; i++) {
      const c = line[i];
      if (c === "\\") i++;
      else if (c === '"') quoted = !quoted;
      else if (c === "}" && !quoted) break;
    }
    i++;
  }
  const rest = line.slice(i).trim().split(/\s+/)[0] ?? "";
  return Number(rest);
}

/** Parses the signals; undefined if the page has none of the gauges (not a vLLM server). */
export function parseVllmSignals(text: string): VllmSignals | undefined {
  let waiting = 0;
  let running = 0;
  let kv = 0;
  let found = false;
  // Each gauge's lines are found with indexOf, without splitting the whole page (mostly histograms) into
  // lines: that split was most of a scrape's CPU.
  for (const name of NAMES) {
    for (let at = lineStart(text, name, 0); at !== -1; at = lineStart(text, name, at + 1)) {
      const end = text.indexOf("\n", at);
      const line = text.slice(at, end === -1 ? undefined : end);
      if (line[name.length] !== "{" && line[name.length] !== " ") continue;
      const value = sampleValue(line, name.length);
      if (!Number.isFinite(value) || value < 0) continue;
      found = true;
      if (name === WAITING) waiting += value;
      else if (name === RUNNING) running += value;
      else kv = Math.max(kv, Math.min(value, 1));
    }
  }
  if (!found) return undefined;
  const lora = parseLoraInfo(text);
  return lora === undefined
    ? { waiting, running, kvCacheUsage: kv }
    : { waiting, running, kvCacheUsage: kv, lora };
}

/**
 * vllm:lora_requests_info's newest label set (vLLM keeps every set it ever reported; the value is when it
 * was set): the adapters of running and waiting requests, comma-separated, and max_lora.
 */
function parseLoraInfo(text: string): VllmSignals["lora"] {
  let newest: string | undefined;
  let newestAt = Number.NEGATIVE_INFINITY;
  for (let at = lineStart(text, LORA, 0); at !== -1; at = lineStart(text, LORA, at + 1)) {
    const end = text.indexOf("\n", at);
    const line = text.slice(at, end === -1 ? undefined : end);
    if (line[LORA.length] !== "{") continue;
    const value = sampleValue(line, LORA.length);
    if (Number.isFinite(value) && value > newestAt) {
      newest = line;
      newestAt = value;
    }
  }
  if (newest === undefined) return undefined;
  const label = (name: string) => new RegExp(`[{,]${name}="([^"]*)"`).exec(newest as string)?.[1] ?? "";
  const names = (v: string) => (v === "" ? [] : v.split(",").slice(0, MAX_LORA_NAMES));
  const max = Number(label("max_lora"));
  return {
    running: names(label("running_lora_adapters")),
    waiting: names(label("waiting_lora_adapters")),
    max: Number.isInteger(max) && max > 0 ? max : 1,
  };
}

/** Where the next line starting with `name` begins, at or after `from`; -1 if none. */
function lineStart(text: string, name: string, from: number): number {
  if (from === 0 && text.startsWith(name)) return 0;
  const i = text.indexOf(`\n${name}`, from === 0 ? 0 : from - 1);
  return i === -1 ? -1 : i + 1;
}
