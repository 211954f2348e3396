/** The three gauges routing reads, from a vLLM /metrics page: summed over engines, KV usage the largest. */
import { expect, it } from "vitest";
import { parseVllmSignals } from "../../../server/replicas/vllm-signals.js";

it("reads the gauges wherever they are on the page, and nothing that only starts like them", () => {
  const page = [
    "vllm:num_requests_waiting 2",
    "# HELP vllm:num_requests_running Number of requests in model execution batches.",
    "# TYPE vllm:num_requests_running gauge",
    'vllm:num_requests_running{model_name="m",engine="0"} 3',
    'vllm:num_requests_running{model_name="m",engine="1"} 4',
    'vllm:num_requests_waiting_by_reason{reason="capacity"} 99',
    'vllm:time_to_first_token_seconds_bucket{le="0.001",model_name="m"} 7',
    'vllm:num_requests_waiting{model_name="m",engine="1",note="a } b"} 1.5',
    'vllm:gpu_cache_usage_perc{model_name="m"} 0.25',
    'vllm:kv_cache_usage_perc{model_name="m"} 0.5',
    "vllm:kv_cache_usage_perc_other 0.9",
  ].join("\n");
  expect(parseVllmSignals(page)).toEqual({ waiting: 3.5, running: 7, kvCacheUsage: 0.5 });
  expect(parseVllmSignals("process_cpu_seconds_total 1\n")).toBeUndefined();
});
