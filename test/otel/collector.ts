/**
 * A real OpenTelemetry Collector for the tracing tests (built by test/otel/build.sh from test/otel/collector):
 * its OTLP/HTTP receiver on a free loopback port, every span it receives appended to a file as OTLP
 * JSON, read back here span by span.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort } from "../helpers/free-port.js";
import { waitFor } from "../helpers/idle.js";

const root = new URL("../..", import.meta.url).pathname;

/** One span as the collector received it (OTLP JSON: ids in hex, attributes flattened here). */
export interface ReceivedSpan {
  readonly service: string;
  readonly traceId: string;
  readonly spanId: string;
  /** "" for a root span. */
  readonly parentSpanId: string;
  readonly name: string;
  /** OTLP's SpanKind number: 2 server, 3 client. */
  readonly kind: number;
  readonly attributes: Readonly<Record<string, string | number | boolean>>;
  /** OTLP's status code: 0 unset, 1 ok, 2 error. */
  readonly status: number;
}

export interface Collector {
  /** The OTLP/HTTP base URL (spans go to <it>/v1/traces). */
  readonly endpoint: string;
  /** Every span received so far. */
  spans(): ReceivedSpan[];
  /** Resolves with the spans of `traceId` once `done` holds for them. */
  trace(
    traceId: string,
    done: (spans: ReceivedSpan[]) => boolean,
    timeoutMs?: number,
  ): Promise<ReceivedSpan[]>;
  /** Resolves with the first span that `match` accepts, once it has arrived. */
  span(match: (span: ReceivedSpan) => boolean, timeoutMs?: number): Promise<ReceivedSpan>;
  stop(): Promise<void>;
}

export async function startCollector(): Promise<Collector> {
  const binary = execFileSync(join(root, "test/otel/build.sh"), {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "inherit"],
  }).trim();
  const dir = mkdtempSync(join(tmpdir(), "kinfer-otelcol-"));
  const port = await freePort();
  const out = join(dir, "spans.jsonl");
  writeFileSync(
    join(dir, "config.yaml"),
    [
      "receivers:",
      "  otlp:",
      "    protocols:",
      "      http:",
      `        endpoint: 127.0.0.1:${port}`,
      "exporters:",
      "  spanfile:",
      `    path: ${out}`,
      "service:",
      "  telemetry:",
      "    metrics:",
      "      level: none",
      "  pipelines:",
      "    traces:",
      "      receivers: [otlp]",
      "      exporters: [spanfile]",
      "",
    ].join("\n"),
  );
  const child: ChildProcess = spawn(binary, ["--config", join(dir, "config.yaml")], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  let log = "";
  child.stderr?.on("data", (chunk: Buffer) => {
    log = (log + chunk.toString()).slice(-20_000);
  });
  const endpoint = `http://127.0.0.1:${port}`;
  await waitFor(() => log.includes("Everything is ready"), `the collector to start: ${log}`, 30_000);

  const spans = (): ReceivedSpan[] => {
    if (!existsSync(out)) return [];
    const list: ReceivedSpan[] = [];
    for (const line of readFileSync(out, "utf8").split("\n")) {
      if (line === "") continue;
      for (const rs of JSON.parse(line).resourceSpans ?? []) {
        const service = String(flatten(rs.resource?.attributes)["service.name"] ?? "");
        for (const ss of rs.scopeSpans ?? [])
          for (const s of ss.spans ?? [])
            list.push({
              service,
              traceId: s.traceId,
              spanId: s.spanId,
              parentSpanId: s.parentSpanId ?? "",
              name: s.name,
              kind: s.kind ?? 0,
              attributes: flatten(s.attributes),
              status: s.status?.code ?? 0,
            });
      }
    }
    return list;
  };
  return {
    endpoint,
    spans,
    async trace(traceId, done, timeoutMs = 10_000) {
      let found: ReceivedSpan[] = [];
      await waitFor(
        () => {
          found = spans().filter((s) => s.traceId === traceId);
          return done(found);
        },
        `the spans of trace ${traceId} (have ${found.length})`,
        timeoutMs,
      );
      return found;
    },
    async span(match, timeoutMs = 10_000) {
      let found: ReceivedSpan | undefined;
      await waitFor(
        () => {
          found = spans().find(match);
          return found !== undefined;
        },
        "a span",
        timeoutMs,
      );
      return found as ReceivedSpan;
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((r) => child.once("exit", r));
        child.kill("SIGTERM");
        await exited;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** OTLP JSON attributes ([{key, value: {stringValue|intValue|...}}]) as a plain record. */
function flatten(attributes: unknown): Record<string, string | number | boolean> {
  const out: Record<string, string | number | boolean> = {};
  for (const a of (attributes ?? []) as { key: string; value: Record<string, unknown> }[]) {
    const v = a.value ?? {};
    if ("stringValue" in v) out[a.key] = String(v.stringValue);
    else if ("intValue" in v) out[a.key] = Number(v.intValue);
    else if ("doubleValue" in v) out[a.key] = Number(v.doubleValue);
    else if ("boolValue" in v) out[a.key] = Boolean(v.boolValue);
  }
  return out;
}
