/**
 * The built-in progressive rollout on simulated versions, under a steady load of real requests: a healthy
 * canary is promoted step by step; a failing canary, and a slower one that fails nothing, are rolled back
 * and get no more traffic; when a finished canary's replicas go away, all traffic returns to stable.
 */
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterEach, describe, expect, it } from "vitest";
import { InferenceService } from "../../../gen/es/kinfer/inference/v1/inference_pb.js";
import { parseGatewayConfig } from "../../../server/config/gateway-config.js";
import { type Harness, startHarness } from "../../helpers/gateway-harness.js";

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

const ROLLOUT = {
  intervalMs: 300,
  stepWeight: 20,
  maxWeight: 60,
  minRequests: 8,
  maxFailureRate: 0.05,
  maxTtftRatio: 2,
  failureLimit: 2,
};

async function start(): Promise<Harness> {
  h = await startHarness({
    // As many canary replicas as stable ones: at 60% the canary's replicas are not busier than stable's.
    models: { m: { stable: 2, canary: 2 } },
    weights: { m: { stable: 100, canary: 0 } },
    modelConfig: { m: { rollout: ROLLOUT } },
    config: { routing: { algorithm: "least-outstanding" } },
  });
  return h;
}

/** The rollout's phase and canary weight, from /metrics as an operator would read them. */
async function rolloutState(harness: Harness): Promise<{ phase: string; weight: number }> {
  const text = await (await fetch(`${harness.url}/metrics`)).text();
  const phase = /kinfer_gateway_rollout_phase\{model="m",phase="([a-z-]+)"\} 1/.exec(text)?.[1] ?? "none";
  const weight = Number(/kinfer_gateway_rollout_canary_weight\{model="m"\} (\d+)/.exec(text)?.[1] ?? -1);
  return { phase, weight };
}

/** Sends requests (8 at a time) until the rollout ends; returns the canary weights it went through. */
async function runUntilDone(
  harness: Harness,
  timeoutMs = 30_000,
): Promise<{ phase: string; weights: number[] }> {
  const client = createClient(
    InferenceService,
    createConnectTransport({ baseUrl: harness.url, httpVersion: "2" }),
  );
  const weights: number[] = [];
  let phase = "idle";
  const end = Date.now() + timeoutMs;
  let stop = false;
  const worker = async () => {
    while (!stop) {
      try {
        for await (const _ of client.generate({ model: "m", prompt: "hello", sampling: { maxTokens: 4 } })) {
          // drain
        }
      } catch (err) {
        if (ConnectError.from(err).code !== Code.Unavailable) throw err;
      }
    }
  };
  const workers = Array.from({ length: 8 }, worker);
  while (Date.now() < end) {
    const s = await rolloutState(harness);
    if (weights.at(-1) !== s.weight) weights.push(s.weight);
    phase = s.phase;
    if (phase === "promoted" || phase === "rolled-back") break;
    await new Promise((r) => setTimeout(r, 50));
  }
  stop = true;
  await Promise.all(workers);
  return { phase, weights };
}

/** Which version a fresh request lands on, over n requests. */
async function versions(harness: Harness, n: number): Promise<Record<string, number>> {
  const client = createClient(
    InferenceService,
    createConnectTransport({ baseUrl: harness.url, httpVersion: "2" }),
  );
  const out: Record<string, number> = {};
  for (let i = 0; i < n; i++) {
    for await (const res of client.generate({ model: "m", prompt: "hi", sampling: { maxTokens: 1 } })) {
      if (res.event.case === "start") out[res.event.value.version] = (out[res.event.value.version] ?? 0) + 1;
    }
  }
  return out;
}

describe("built-in progressive rollout", () => {
  it("promotes a healthy canary step by step, then all traffic goes to it", async () => {
    const harness = await start();
    const { phase, weights } = await runUntilDone(harness);
    expect(phase).toBe("promoted");
    expect(weights.filter((w) => w > 0)).toEqual([20, 40, 60, 100]);
    expect(await versions(harness, 20)).toEqual({ canary: 20 });
  });

  it("rolls back a failing canary: its weight goes to 0 and it gets no more requests", async () => {
    const harness = await start();
    await harness.setFaults(harness.replicas.get("m/canary") ?? [], { errorMidStream: 0.5, afterTokens: 1 });
    const { phase, weights } = await runUntilDone(harness);
    expect(phase).toBe("rolled-back");
    expect(weights.at(-1)).toBe(0);
    expect(Math.max(...weights)).toBeLessThan(60);
    expect(await versions(harness, 20)).toEqual({ stable: 20 });
  });

  it("rolls back a canary that fails nothing but is slower to the first token", async () => {
    const harness = await start();
    // Every canary request waits 150 ms before its first token.
    await harness.setFaults(harness.replicas.get("m/canary") ?? [], {
      stall: 1,
      stallMs: 150,
      stallAfterTokens: 0,
    });
    const { phase } = await runUntilDone(harness);
    expect(phase).toBe("rolled-back");
    expect(await versions(harness, 10)).toEqual({ stable: 10 });
  });

  it("once the rolled-back canary's replicas are gone, the rollout resets with all traffic on stable", async () => {
    const harness = await start();
    await harness.setFaults(harness.replicas.get("m/canary") ?? [], { errorMidStream: 1, afterTokens: 1 });
    expect((await runUntilDone(harness)).phase).toBe("rolled-back");
    await Promise.all((harness.replicas.get("m/canary") ?? []).map((r) => r.close()));
    const until = Date.now() + 5000;
    let state = await rolloutState(harness);
    while (state.phase !== "idle" && Date.now() < until) {
      await new Promise((r) => setTimeout(r, 50));
      state = await rolloutState(harness);
    }
    expect(state).toEqual({ phase: "idle", weight: 0 });
    expect(await versions(harness, 10)).toEqual({ stable: 10 });
  });
});

describe("rollout config", () => {
  it("names versions the model does not have", () => {
    expect(() =>
      parseGatewayConfig({
        models: [{ name: "m", versions: [{ name: "stable" }], rollout: { canary: "canary" } }],
      }),
    ).toThrow(/models\.0\.rollout.*no version "canary"/s);
  });
});
