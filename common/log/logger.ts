/**
 * Logs of kinfer's programs (pino): structured JSON on stdout in a cluster, one object per line (the
 * gateway's request log, lifecycle events, upstream failures; the scheduler's informer events), or, on a
 * laptop (`npm start`), one readable line per event: `12:00:01 WARN kinfer-gateway: replica ejected
 * replica=http://...`. Upstream error text is logged, never sent to clients.
 */
import { type DestinationStream, type Logger, pino } from "pino";

export type { Logger };

/** json: one JSON object per line (the default, for log collectors); text: one readable line per event. */
export type LogFormat = "json" | "text";

const LEVELS: Record<number, string> = {
  10: "TRACE",
  20: "DEBUG",
  30: "INFO",
  40: "WARN",
  50: "ERROR",
  60: "FATAL",
};
const OWN_KEYS = new Set(["level", "time", "pid", "hostname", "name", "service", "msg"]);

/** Renders pino's JSON lines as text lines on `out`. */
function textDestination(out: NodeJS.WritableStream): DestinationStream {
  return {
    write(line: string) {
      let o: Record<string, unknown>;
      try {
        o = JSON.parse(line) as Record<string, unknown>;
      } catch {
        out.write(line);
        return;
      }
      const time = typeof o.time === "string" ? o.time.slice(11, 19) : "";
      const fields = Object.entries(o)
        .filter(([k, v]) => !OWN_KEYS.has(k) && v !== undefined)
        .map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`)
        .join(" ");
      out.write(
        `${time} ${LEVELS[o.level as number] ?? "INFO"} ${String(o.name)}: ${String(o.msg)}${fields ? ` ${fields}` : ""}\n`,
      );
    },
  };
}

export function createLogger(level: string, name: string, format: LogFormat = "json"): Logger {
  const options = { name, level, base: { service: name }, timestamp: pino.stdTimeFunctions.isoTime };
  return format === "text" ? pino(options, textDestination(process.stdout)) : pino(options);
}
