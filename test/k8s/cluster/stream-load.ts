/**
 * Clients of the gateway in the cluster tests: one streaming request over gRPC, Connect or the OpenAI API,
 * classified by how it ended, and a closed-loop load of such streams spread over the gateway pods the way
 * kube-proxy spreads connections over a Service (each stream opens its own connection to one ready
 * endpoint, picked at random when it starts). Used to measure what a rolling restart does to streams.
 *
 * A stream ends one of three ways:
 * - completed: it reached its finish (finish reason, or `[DONE]` after one) with at least one token;
 * - refused: it failed before its first token (connection refused or reset, UNAVAILABLE...): nothing was
 *   lost and a client may retry it;
 * - ended early: it failed after tokens had arrived: a stream lost.
 */
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { createParser } from "eventsource-parser";
import { Agent, request } from "undici";
import { FinishReason, InferenceService } from "../../../gen/es/kinfer/inference/v1/inference_pb.js";

export type Protocol = "grpc" | "connect" | "openai";

export interface StreamOutcome {
  readonly protocol: Protocol;
  /** The gateway endpoint it went to (http://ip:port). */
  readonly gateway: string;
  readonly startedAt: number;
  readonly endedAt: number;
  readonly tokens: number;
  readonly result: "completed" | "refused" | "ended-early";
  /** For the other two results: the Connect code (or HTTP status) and message. */
  readonly error?: string;
}

export interface StreamOptions {
  readonly model: string;
  /** Tokens to ask for. */
  readonly maxTokens: number;
  /** Ask for all of them (vLLM's ignore_eos; OpenAI API only): a stream of known length. */
  readonly ignoreEos?: boolean;
}

/** One stream through the gateway at `gateway` (http://ip:port), on a connection of its own. */
export async function streamOnce(
  gateway: string,
  protocol: Protocol,
  options: StreamOptions,
): Promise<StreamOutcome> {
  const startedAt = Date.now();
  let tokens = 0;
  const done = (result: StreamOutcome["result"], error?: string): StreamOutcome => ({
    protocol,
    gateway,
    startedAt,
    endedAt: Date.now(),
    tokens,
    result,
    ...(error !== undefined ? { error } : {}),
  });
  const failed = (error: string) => done(tokens > 0 ? "ended-early" : "refused", error);
  if (protocol === "openai") {
    const agent = new Agent({ connections: 1 });
    try {
      const res = await request(`${gateway}/v1/chat/completions`, {
        method: "POST",
        dispatcher: agent,
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          model: options.model,
          stream: true,
          max_tokens: options.maxTokens,
          ...(options.ignoreEos ? { ignore_eos: true } : {}),
          messages: [{ role: "user", content: "Tell me about rolling restarts." }],
        }),
      });
      if (res.statusCode !== 200) {
        const text = await res.body.text();
        return failed(`HTTP ${res.statusCode} ${text.slice(0, 200)}`);
      }
      let finished = false;
      let error: string | undefined;
      const parser = createParser({
        onEvent(event) {
          if (event.data === "[DONE]") return;
          const chunk = JSON.parse(event.data) as {
            error?: { message?: string };
            choices?: { delta?: { content?: string }; finish_reason?: string | null }[];
          };
          if (chunk.error !== undefined) error = chunk.error.message ?? "in-band error";
          for (const choice of chunk.choices ?? []) {
            if (choice.delta?.content) tokens++;
            if (choice.finish_reason) finished = choice.finish_reason !== "abort";
          }
        },
      });
      const decoder = new TextDecoder();
      for await (const part of res.body) parser.feed(decoder.decode(part as Uint8Array, { stream: true }));
      if (error !== undefined) return failed(error);
      return finished && tokens > 0 ? done("completed") : failed("the stream ended without its finish");
    } catch (err) {
      return failed(err instanceof Error ? err.message : String(err));
    } finally {
      await agent.close().catch(() => {});
    }
  }
  const transport =
    protocol === "grpc"
      ? createGrpcTransport({ baseUrl: gateway })
      : createConnectTransport({ baseUrl: gateway, httpVersion: "1.1" });
  const client = createClient(InferenceService, transport);
  try {
    let finish: FinishReason | undefined;
    for await (const res of client.generate({
      model: options.model,
      prompt: "Tell me about rolling restarts.",
      sampling: { maxTokens: options.maxTokens },
    })) {
      if (res.event.case === "delta") tokens++;
      if (res.event.case === "finish") finish = res.event.value.finishReason;
    }
    return finish !== undefined && finish !== FinishReason.ABORT && tokens > 0
      ? done("completed")
      : failed("the stream ended without its finish");
  } catch (err) {
    const e = ConnectError.from(err);
    return failed(`${Code[e.code]}: ${e.rawMessage}`);
  }
}

export interface Load {
  /** Stops starting streams, waits for the open ones, and returns every outcome. */
  stop(): Promise<StreamOutcome[]>;
}

export interface LoadOptions {
  /** The gateway endpoints ready now (http://ip:port); read at each stream's start. */
  readonly targets: () => readonly string[];
  readonly model: string;
  /** Streams open at once. */
  readonly concurrency: number;
  /** Every stream this many tokens (short requests, many of them); default a mix of 200 and 3,000. */
  readonly maxTokens?: number;
}

/**
 * Closed loops of streams, the protocols in turn; every third stream is a long one (OpenAI, 3,000 tokens
 * with ignore_eos: tens of seconds), so that some are still open when a pod gets SIGTERM after its preStop.
 */
export function startLoad(options: LoadOptions): Load {
  const outcomes: StreamOutcome[] = [];
  let running = true;
  const protocols: Protocol[] = ["grpc", "connect", "openai"];
  const loops = Array.from({ length: options.concurrency }, async (_, worker) => {
    for (let i = worker; running; i++) {
      const targets = options.targets();
      const gateway = targets[Math.floor(Math.random() * targets.length)];
      if (gateway === undefined) {
        await new Promise((r) => setTimeout(r, 100));
        continue;
      }
      const long = options.maxTokens === undefined && i % 3 === 2;
      const protocol = long ? "openai" : (protocols[i % 3] as Protocol);
      outcomes.push(
        await streamOnce(gateway, protocol, {
          model: options.model,
          maxTokens: options.maxTokens ?? (long ? 3000 : 200),
          ignoreEos: long,
        }),
      );
    }
  });
  return {
    async stop() {
      running = false;
      await Promise.all(loops);
      return outcomes;
    },
  };
}

/** Counts of a load's outcomes, for reports: result, and the errors by kind. */
export function summarize(outcomes: readonly StreamOutcome[]) {
  const count = (r: StreamOutcome["result"]) => outcomes.filter((o) => o.result === r).length;
  return {
    streams: outcomes.length,
    completed: count("completed"),
    refused: count("refused"),
    endedEarly: count("ended-early"),
    longest: Math.max(0, ...outcomes.map((o) => o.endedAt - o.startedAt)),
    errors: outcomes
      .filter((o) => o.error !== undefined)
      .map((o) => `${o.result} ${o.protocol} ${o.gateway} after ${o.tokens} tokens: ${o.error}`),
  };
}
