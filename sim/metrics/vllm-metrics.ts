/**
 * /metrics of a simulated replica, with vLLM's metric names, labels (model_name, engine) and histogram
 * buckets (vllm/v1/metrics/loggers.py). Gauges and token counters are read from the engine when scraped,
 * so they always report its true state; histograms and the finished-request counter are fed by engine
 * events. One registry per replica: several replicas can share a process.
 */
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import { ITL_BUCKETS, REQUEST_LATENCY_BUCKETS, TTFT_BUCKETS } from "../../common/metrics/vllm-buckets.js";
import type { Engine, EngineObserver, SequenceResult } from "../engine/engine.js";

/** vLLM's 1-2-5 buckets up to `max`. */
function buckets125(max: number): number[] {
  const out: number[] = [];
  for (let base = 1; base <= max; base *= 10) {
    for (const m of [1, 2, 5]) if (m * base <= max) out.push(m * base);
  }
  return out;
}

/** The metrics of one replica. */
export interface ReplicaMetrics {
  readonly registry: Registry;
  /** Feed this to createEngine. */
  readonly observer: EngineObserver;
  /** Connects the gauges to the engine (call once, after the engine exists). */
  bind(engine: Engine): void;
}

/**
 * `lora`: the replica serves LoRA adapters (--enable-lora), and reports vllm:lora_requests_info: its
 * labels name the adapters of running and waiting requests (comma-separated) and max_lora, its value is
 * the time it was set (vLLM keeps every label set it ever reported, so readers take the newest; the
 * simulator reports only the current one).
 */
export function createReplicaMetrics(modelName: string, options: { lora?: boolean } = {}): ReplicaMetrics {
  const registry = new Registry();
  const labels = { model_name: modelName, engine: "0" };
  const labelNames = ["model_name", "engine"] as const;
  let engine: Engine | undefined;
  const stats = () => engine?.stats();

  const gauge = (name: string, help: string, read: () => number | undefined) =>
    new Gauge({
      name,
      help,
      labelNames,
      registers: [registry],
      collect() {
        this.set(labels, read() ?? 0);
      },
    });
  const counterFromEngine = (name: string, help: string, read: () => number | undefined) =>
    new Counter({
      name,
      help,
      labelNames,
      registers: [registry],
      collect() {
        this.reset();
        this.inc(labels, read() ?? 0);
      },
    });
  const histogram = (name: string, help: string, buckets: readonly number[]) =>
    new Histogram({ name, help, labelNames, buckets: [...buckets], registers: [registry] });

  gauge(
    "vllm:num_requests_running",
    "Number of requests in model execution batches.",
    () => stats()?.running,
  );
  gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", () => stats()?.waiting);
  gauge(
    "vllm:kv_cache_usage_perc",
    "KV-cache usage. 1 means 100 percent usage.",
    () => stats()?.kvCacheUsage,
  );
  counterFromEngine(
    "vllm:prompt_tokens_total",
    "Number of prefill tokens processed.",
    () => stats()?.promptTokens,
  );
  counterFromEngine(
    "vllm:generation_tokens_total",
    "Number of generation tokens processed.",
    () => stats()?.generationTokens,
  );
  counterFromEngine(
    "vllm:prefix_cache_queries_total",
    "Prefix cache queries, in terms of number of queried tokens.",
    () => stats()?.prefixCacheQueries,
  );
  counterFromEngine(
    "vllm:prefix_cache_hits_total",
    "Prefix cache hits, in terms of number of cached tokens.",
    () => stats()?.prefixCacheHits,
  );
  counterFromEngine(
    "vllm:num_preemptions_total",
    "Cumulative number of preemption from the engine.",
    () => stats()?.preemptions,
  );
  if (options.lora === true)
    new Gauge({
      name: "vllm:lora_requests_info",
      help: "Running stats on lora requests.",
      labelNames: ["max_lora", "waiting_lora_adapters", "running_lora_adapters"],
      registers: [registry],
      collect() {
        const s = stats();
        if (s === undefined || engine === undefined) return;
        this.reset();
        this.set(
          {
            max_lora: String(engine.options.maxLoras),
            waiting_lora_adapters: s.waitingLoras.join(","),
            running_lora_adapters: s.runningLoras.join(","),
          },
          Date.now() / 1000,
        );
      },
    });
  const cacheConfig = new Gauge({
    name: "vllm:cache_config_info",
    help: "Information of the LLMEngine CacheConfig.",
    labelNames: ["block_size", "num_gpu_blocks", "enable_prefix_caching", "engine"],
    registers: [registry],
  });

  const success = new Counter({
    name: "vllm:request_success_total",
    help: "Count of successfully processed requests.",
    labelNames: ["model_name", "engine", "finished_reason"],
    registers: [registry],
  });
  const ttft = histogram(
    "vllm:time_to_first_token_seconds",
    "Histogram of time to first token in seconds.",
    TTFT_BUCKETS,
  );
  const itl = histogram(
    "vllm:inter_token_latency_seconds",
    "Histogram of inter-token latency in seconds.",
    ITL_BUCKETS,
  );
  const e2e = histogram(
    "vllm:e2e_request_latency_seconds",
    "Histogram of e2e request latency in seconds.",
    REQUEST_LATENCY_BUCKETS,
  );
  const queue = histogram(
    "vllm:request_queue_time_seconds",
    "Histogram of time spent in WAITING phase for request.",
    REQUEST_LATENCY_BUCKETS,
  );
  const prefill = histogram(
    "vllm:request_prefill_time_seconds",
    "Histogram of time spent in PREFILL phase for request.",
    REQUEST_LATENCY_BUCKETS,
  );
  const decode = histogram(
    "vllm:request_decode_time_seconds",
    "Histogram of time spent in DECODE phase for request.",
    REQUEST_LATENCY_BUCKETS,
  );
  let promptTokens: Histogram | undefined;
  let generationTokens: Histogram | undefined;

  const observer: EngineObserver = {
    onInterToken(gapMs) {
      itl.observe(labels, gapMs / 1000);
    },
    onSequenceFinished(r: SequenceResult) {
      success.inc({ ...labels, finished_reason: r.reason });
      promptTokens?.observe(labels, r.promptTokens);
      generationTokens?.observe(labels, r.completionTokens);
      e2e.observe(labels, (r.finishMs - r.arrivalMs) / 1000);
      if (r.scheduledMs !== undefined) queue.observe(labels, (r.scheduledMs - r.arrivalMs) / 1000);
      if (r.firstTokenMs !== undefined) {
        ttft.observe(labels, (r.firstTokenMs - r.arrivalMs) / 1000);
        if (r.scheduledMs !== undefined) prefill.observe(labels, (r.firstTokenMs - r.scheduledMs) / 1000);
        decode.observe(labels, (r.finishMs - r.firstTokenMs) / 1000);
      }
    },
  };

  return {
    registry,
    observer,
    bind(e) {
      engine = e;
      const o = e.options;
      cacheConfig.set(
        {
          block_size: String(o.blockSize),
          num_gpu_blocks: String(o.numGpuBlocks),
          enable_prefix_caching: String(o.enablePrefixCaching),
          engine: "0",
        },
        1,
      );
      promptTokens = histogram(
        "vllm:request_prompt_tokens",
        "Number of prefill tokens processed.",
        buckets125(o.maxModelLen),
      );
      generationTokens = histogram(
        "vllm:request_generation_tokens",
        "Number of generation tokens processed.",
        buckets125(o.maxModelLen),
      );
    },
  };
}
