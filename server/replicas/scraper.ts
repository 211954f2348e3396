/**
 * Polls every replica's /health and /metrics so that routing sees live health and load. Each round scrapes
 * all replicas with at most `concurrency` requests at once, every `intervalMs`; a round still running when
 * the next is due delays it (rounds never pile up). A replica whose /health fails or times out is marked
 * unhealthy until a probe succeeds again. Uses its own connection pool, apart from the relay's.
 */
import { Agent, request } from "undici";
import type { GatewayConfig } from "../config/gateway-config.js";
import type { Replica } from "./replica.js";
import { parseVllmSignals } from "./vllm-signals.js";

const MAX_METRICS_BYTES = 4 * 1024 * 1024;

export interface Scraper {
  /** Scrapes every replica once now (tests and start-up use it). */
  scrapeAll(): Promise<void>;
  close(): Promise<void>;
}

export function startScraper(
  replicas: () => readonly Replica[],
  options: GatewayConfig["scrape"],
  now: () => number,
  onHealthChange?: (replica: Replica, healthy: boolean) => void,
  onSignals?: (replica: Replica) => void,
): Scraper {
  const agent = new Agent({
    connections: 2,
    keepAliveTimeout: 30_000,
    connect: { timeout: options.timeoutMs },
  });
  let timer: NodeJS.Timeout | undefined;
  let closed = false;
  let round: Promise<void> | undefined;

  async function fetchText(url: string): Promise<{ status: number; text: string }> {
    const res = await request(url, {
      dispatcher: agent,
      signal: AbortSignal.timeout(options.timeoutMs),
      headersTimeout: options.timeoutMs,
      bodyTimeout: options.timeoutMs,
    });
    let text = "";
    for await (const chunk of res.body) {
      text += (chunk as Buffer).toString("utf8");
      if (text.length > MAX_METRICS_BYTES) {
        res.body.destroy();
        throw new Error("metrics page too large");
      }
    }
    return { status: res.statusCode, text };
  }

  async function scrape(replica: Replica): Promise<void> {
    let healthy: boolean;
    try {
      healthy = (await fetchText(`${replica.url}/health`)).status === 200;
    } catch {
      healthy = false;
    }
    if (replica.healthy !== healthy) {
      replica.healthy = healthy;
      onHealthChange?.(replica, healthy);
      onSignals?.(replica);
    }
    if (!healthy) return;
    try {
      const page = await fetchText(`${replica.url}/metrics`);
      const signals = page.status === 200 ? parseVllmSignals(page.text) : undefined;
      if (signals !== undefined) {
        replica.signals = { ...signals, scrapedAt: now() };
        replica.sentSinceScrape = 0;
        onSignals?.(replica);
      }
    } catch {
      // Keep the last signals; they go stale by age and routing stops trusting them.
    }
  }

  async function scrapeAll(): Promise<void> {
    const queue = [...replicas()];
    const workers = Array.from({ length: Math.min(options.concurrency, queue.length) }, async () => {
      for (let r = queue.shift(); r !== undefined; r = queue.shift()) await scrape(r);
    });
    await Promise.all(workers);
  }

  function loop() {
    if (closed) return;
    const started = Date.now();
    round = scrapeAll().finally(() => {
      round = undefined;
      if (!closed) timer = setTimeout(loop, Math.max(0, options.intervalMs - (Date.now() - started)));
    });
  }
  timer = setTimeout(loop, 0);

  return {
    scrapeAll,
    async close() {
      closed = true;
      clearTimeout(timer);
      await round?.catch(() => {});
      await agent.close();
    },
  };
}
