/**
 * Scripted replicas for the relay's and the pipeline's unit tests: loopback HTTP servers whose every answer
 * is a function the test sets (a vLLM stream, an error status, silence, a reset), which record what they
 * were sent and count the requests the gateway gave up on (closed before the answer ended). The simulator
 * (sim/) is the realistic replica of the integration tests; these are for the failures it would have to be
 * coaxed into, one request at a time, fast enough to run against every mutant.
 */
import * as http from "node:http";
import type { AddressInfo } from "node:net";

/** What a replica was sent. */
export interface SeenRequest {
  readonly replica: number;
  readonly path: string;
  readonly headers: http.IncomingHttpHeaders;
  readonly body: Record<string, unknown>;
}

export type Answer = (req: SeenRequest, res: http.ServerResponse) => void;

export interface ScriptedFleet {
  /** Replica i's base URL. */
  readonly urls: readonly string[];
  readonly seen: SeenRequest[];
  /** Requests whose connection closed before their answer ended (the gateway gave up on them). */
  readonly abandoned: number[];
  /** Requests being answered now, per replica. */
  open(replica: number): number;
  answer(replica: number, answer: Answer): void;
  /** Stops replica i listening (its port then refuses connections). */
  stop(replica: number): Promise<void>;
  close(): Promise<void>;
}

export async function startScriptedFleet(n: number): Promise<ScriptedFleet> {
  const answers: Answer[] = [];
  const seen: SeenRequest[] = [];
  const abandoned: number[] = Array.from({ length: n }, () => 0);
  const open: number[] = Array.from({ length: n }, () => 0);
  const servers = await Promise.all(
    Array.from({ length: n }, async (_, i) => {
      answers[i] = (_req, res) => res.writeHead(500).end();
      const server = http.createServer((req, res) => {
        let text = "";
        req.on("data", (c: Buffer) => {
          text += c.toString();
        });
        req.on("end", () => {
          const s: SeenRequest = {
            replica: i,
            path: req.url ?? "",
            headers: req.headers,
            body: text === "" ? {} : (JSON.parse(text) as Record<string, unknown>),
          };
          seen.push(s);
          open[i] = (open[i] ?? 0) + 1;
          res.on("close", () => {
            open[i] = (open[i] ?? 0) - 1;
            if (!res.writableFinished) abandoned[i] = (abandoned[i] ?? 0) + 1;
          });
          answers[i]?.(s, res);
        });
      });
      await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
      return server;
    }),
  );
  const urls = servers.map((s) => `http://127.0.0.1:${(s.address() as AddressInfo).port}`);
  const stopServer = async (s: http.Server) => {
    s.closeAllConnections();
    await new Promise((r) => s.close(r));
  };
  return {
    urls,
    seen,
    abandoned,
    open: (i) => open[i] ?? 0,
    answer(i, answer) {
      answers[i] = answer;
    },
    async stop(i) {
      const s = servers[i];
      if (s?.listening) await stopServer(s);
    },
    async close() {
      await Promise.all(servers.filter((s) => s.listening).map(stopServer));
    },
  };
}

/** Server-sent events as vLLM writes them. */
export const sse = (...chunks: unknown[]) =>
  chunks.map((c) => `data: ${typeof c === "string" ? c : JSON.stringify(c)}\n\n`).join("");

/** A chat chunk with `content`, and optionally vLLM's continuous usage stats. */
export const chunk = (content: string, usage?: { prompt: number; completion: number; cached?: number }) => ({
  choices: [{ index: 0, delta: { content } }],
  ...(usage !== undefined
    ? {
        usage: {
          prompt_tokens: usage.prompt,
          completion_tokens: usage.completion,
          prompt_tokens_details: { cached_tokens: usage.cached ?? 0 },
        },
      }
    : {}),
});

/** A chat chunk that ends the choice. */
export const finishChunk = (reason: string, stopReason?: string) => ({
  choices: [{ index: 0, delta: {}, finish_reason: reason, stop_reason: stopReason ?? null }],
});

/** Answers with a whole stream at once: `texts` as tokens, then `reason`, usage and [DONE]. */
export const streamOf =
  (
    texts: readonly string[],
    reason = "stop",
    usage = { prompt: 3, completion: texts.length, cached: 1 },
  ): Answer =>
  (_req, res) => {
    res.writeHead(200, { "content-type": "text/event-stream" });
    res.end(
      sse(
        ...texts.map((t) => chunk(t)),
        finishChunk(reason),
        {
          choices: [],
          usage: {
            prompt_tokens: usage.prompt,
            completion_tokens: usage.completion,
            prompt_tokens_details: { cached_tokens: usage.cached },
          },
        },
        "[DONE]",
      ),
    );
  };

/** Answers with an HTTP error status and a vLLM-style error body. */
export const status =
  (code: number, message = "error", headers: Record<string, string> = {}): Answer =>
  (_req, res) => {
    res.writeHead(code, { "content-type": "application/json", ...headers });
    res.end(JSON.stringify({ object: "error", message, type: "Error", code }));
  };

/** Never answers (until the gateway gives up). */
export const silence: Answer = () => {};
