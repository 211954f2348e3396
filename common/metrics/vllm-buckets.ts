/**
 * vLLM's histogram buckets (vllm/v1/metrics/loggers.py), in seconds. The simulator exports its metrics
 * with them, and the gateway uses the same ones for its own latency histograms, so that a canary judged
 * on the gateway's figures and a dashboard that puts the two side by side compare like with like.
 */

/** vllm:time_to_first_token_seconds */
export const TTFT_BUCKETS: readonly number[] = [
  0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
  80.0, 160.0, 640.0, 2560.0,
];

/** vllm:inter_token_latency_seconds */
export const ITL_BUCKETS: readonly number[] = [
  0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
];

/** vllm:e2e_request_latency_seconds and the other per-request latencies. */
export const REQUEST_LATENCY_BUCKETS: readonly number[] = [
  0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0,
  960.0, 1920.0, 7680.0,
];
