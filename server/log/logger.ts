/**
 * Structured JSON logs (pino) on stdout: one line per finished request with its request id, and the
 * gateway's lifecycle and upstream failures. Upstream error text is logged here, never sent to clients.
 */
import { type Logger, pino } from "pino";

export type { Logger };

export function createLogger(level: string, name = "kinfer-gateway"): Logger {
  return pino({ name, level, base: { service: name }, timestamp: pino.stdTimeFunctions.isoTime });
}
