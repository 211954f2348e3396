/**
 * Reads every replica's /metrics so that routing sees live load and health, at a rate that follows
 * traffic: a gateway watching hundreds of idle replicas must cost them (and itself) almost nothing, and
 * one carrying traffic must see load change within a scrape interval.
 *
 * - A replica this gateway sends requests to, or whose gauges moved at its last scrape (other gateways'
 *   traffic), is scraped every `intervalMs` (default 100 ms). The relay calls `touch` when it sends a
 *   request, which brings the next scrape of an idle replica forward to at most `intervalMs` away.
 * - A replica with nothing in flight from us and unchanged gauges is scraped less and less often, the
 *   interval doubling up to `idleIntervalMs` (default 2 s): a request every 2 s to each idle replica.
 *   Between scrapes routing counts this gateway's own requests (in flight, sent since the scrape).
 * - Health comes from the scrape itself: an answered /metrics means the server is up. A failed or slow
 *   scrape counts one failure; `unhealthyAfter` consecutive ones (default 3) mark the replica unhealthy,
 *   so one slow scrape under load never flaps it. /health, which alone tells a loading, draining or dead
 *   engine (503) from a running one, is read every `healthIntervalMs` (default 5 s), and at every scrape
 *   while the replica is unhealthy; one success of both makes it healthy again.
 * - An unhealthy replica is scraped at the traffic rate, so that it is routed to again within
 *   `intervalMs` of coming back. When the relay suspects a replica (a refused connection, which also
 *   marks it unhealthy, or a 503 before the first token: an engine restarted and still loading), it calls
 *   `suspect`, which reads /health at once instead of at the next health interval.
 *
 * - A model that discovers LoRA adapters (`discoverAdapters`) has each replica's /v1/models read with
 *   its /health: the adapters listed under it are the ones routing may send that adapter's requests to.
 *
 * Scrapes run at most `concurrency` at once, on their own connection pool apart from the relay's.
 */
import { Agent, request } from "undici";
import type { GatewayConfig } from "../config/gateway-config.js";
import type { Replica } from "./replica.js";
import { parseVllmSignals, type VllmSignals } from "./vllm-signals.js";

/** Most LoRA adapters learned from one replica's /v1/models. */
const MAX_ADAPTERS = 1000;
/** Largest /metrics page read (vLLM's is about 50 KB with every histogram). */
const MAX_METRICS_BYTES = 4 * 1024 * 1024;

export interface Scraper {
  /** Scrapes every replica (/health and /metrics) once now (tests and start-up use it). */
  scrapeAll(): Promise<void>;
  /** The gateway sent `replica` a request: scrape it at the traffic rate from now on. */
  touch(replica: Replica): void;
  /** The relay suspects `replica` is down: read its /health (and /metrics) now. */
  suspect(replica: Replica): void;
  /** The replica set changed: scrape the new ones now. */
  refresh(): void;
  close(): Promise<void>;
}

/** What the scraper keeps per replica, beside the Replica itself. */
interface ScrapeState {
  /** Monotonic ms when the next scrape is due. */
  dueAt: number;
  /** The current interval: intervalMs under traffic, doubling to idleIntervalMs when nothing changes. */
  intervalMs: number;
  /** When /health was last read (monotonic ms). */
  healthAt: number;
  /** /health's last answer: false while it says the engine is not ready. */
  healthOk: boolean;
  /** The relay suspects the replica (`suspect`): read /health at the next scrape. */
  healthDue: boolean;
  /** Consecutive failed scrapes. */
  failures: number;
  last: VllmSignals | undefined;
  running: boolean;
}

export function startScraper(
  replicas: () => readonly Replica[],
  options: GatewayConfig["scrape"],
  now: () => number,
  onHealthChange?: (replica: Replica, healthy: boolean) => void,
  onSignals?: (replica: Replica) => void,
  /** Whether to learn a replica's LoRA adapters from its /v1/models, read with each /health. */
  discoverAdapters?: (replica: Replica) => boolean,
): Scraper {
  const agent = new Agent({
    connections: 2,
    // Below vLLM's 5 s, as the relay's pool (gateway.ts): an idle replica's scrapes, up to idleIntervalMs
    // apart, never go out on a connection the replica is closing; past 4 s each opens a new one.
    keepAliveTimeout: 4_000,
    connect: { timeout: options.timeoutMs },
    // A page larger than this fails the scrape (undici stops reading it).
    maxResponseSize: MAX_METRICS_BYTES,
  });
  const states = new WeakMap<Replica, ScrapeState>();
  let timer: NodeJS.Timeout | undefined;
  let timerAt = Number.POSITIVE_INFINITY;
  let closed = false;
  let running = 0;
  /** The last round left due replicas without a slot. */
  let waiting = false;
  const rounds = new Set<Promise<void>>();

  const stateOf = (r: Replica): ScrapeState => {
    let s = states.get(r);
    if (s === undefined) {
      // A new replica is scraped (health included) at once.
      s = {
        dueAt: 0,
        intervalMs: options.intervalMs,
        healthAt: Number.NEGATIVE_INFINITY,
        healthOk: true,
        healthDue: false,
        failures: 0,
        last: undefined,
        running: false,
      };
      states.set(r, s);
    }
    return s;
  };

  /**
   * One GET, bounded by timeoutMs and the agent's size limit. The bound is kept here, not left to undici
   * alone: a request undici still holds in its queue when its signal aborts waits there for a connection
   * before it rejects, and a scrape that never ends would leave its replica unscraped, and so unhealthy,
   * for good (seen in the cluster tests while a replica crash-looped). undici's header and body timeouts
   * stay as a second bound.
   */
  function fetchText(url: string): Promise<{ status: number; text: string }> {
    const signal = AbortSignal.timeout(options.timeoutMs);
    return new Promise((resolve, reject) => {
      const onAbort = () => reject(signal.reason);
      signal.addEventListener("abort", onAbort, { once: true });
      request(url, {
        dispatcher: agent,
        signal,
        headersTimeout: options.timeoutMs,
        bodyTimeout: options.timeoutMs,
      })
        .then(async (res) => ({ status: res.statusCode, text: await res.body.text() }))
        .then(resolve, reject)
        .finally(() => signal.removeEventListener("abort", onAbort));
    });
  }

  /**
   * The LoRA adapters /v1/models lists under the replica's model (entries with a parent), at most
   * MAX_ADAPTERS of them. A page that cannot be read leaves what was known.
   */
  async function readAdapters(replica: Replica): Promise<void> {
    const page = await fetchText(`${replica.url}/v1/models`);
    if (page.status !== 200) return;
    let data: unknown;
    try {
      data = (JSON.parse(page.text) as { data?: unknown }).data;
    } catch {
      return;
    }
    if (!Array.isArray(data)) return;
    const found = new Set<string>();
    for (const m of data as { id?: unknown; parent?: unknown }[]) {
      if (found.size >= MAX_ADAPTERS) break;
      if (typeof m?.id === "string" && m.id.length <= 256 && typeof m.parent === "string") found.add(m.id);
    }
    replica.adapters = found;
  }

  /** One scrape: /metrics, and /health when it is due; updates health, signals and the next due time. */
  async function scrape(replica: Replica, s: ScrapeState, withHealth: boolean): Promise<void> {
    const started = now();
    const wasUp = replica.healthy !== false;
    let sentBefore = replica.sentSinceScrape;
    let answered = true;
    const suspect = s.healthDue || !s.healthOk || replica.healthy === false;
    if (withHealth || suspect || started - s.healthAt >= options.healthIntervalMs) {
      s.healthDue = false;
      try {
        s.healthOk = (await fetchText(`${replica.url}/health`)).status === 200;
      } catch {
        answered = false;
      }
      s.healthAt = started;
      // Adapter discovery has no say in health or signals: a failure keeps what was known.
      if (answered && s.healthOk && discoverAdapters?.(replica)) await readAdapters(replica).catch(() => {});
    }
    let signals: VllmSignals | undefined;
    if (answered) {
      // Requests sent before /metrics is asked for: the page counts them (those sent while it is out may not be).
      sentBefore = replica.sentSinceScrape;
      try {
        const page = await fetchText(`${replica.url}/metrics`);
        signals = page.status === 200 ? parseVllmSignals(page.text) : undefined;
        answered = page.status === 200;
      } catch {
        answered = false;
      }
    }
    s.failures = answered ? 0 : s.failures + 1;
    const healthy = s.healthOk && s.failures < options.unhealthyAfter;
    // The relay marked the replica down while this scrape was out (a refused connection): what this scrape
    // read may predate the failure, so it gives no verdict; the next one, at the traffic rate and with
    // /health, does. A replica marked down before the scrape began comes back with its first good scrape.
    const markedDownMeanwhile = wasUp && replica.healthy === false;
    if (!markedDownMeanwhile && replica.healthy !== healthy && (answered || !healthy)) {
      replica.healthy = healthy;
      onHealthChange?.(replica, healthy);
      onSignals?.(replica);
    }
    const changed =
      signals !== undefined &&
      (s.last === undefined ||
        signals.waiting !== s.last.waiting ||
        signals.running !== s.last.running ||
        signals.kvCacheUsage !== s.last.kvCacheUsage);
    const sent = replica.sentSinceScrape;
    if (signals !== undefined) {
      s.last = signals;
      replica.signals = { ...signals, scrapedAt: now() };
      // The new signals count what was sent before the scrape: routing stops adding those, not the others.
      replica.sentSinceScrape = Math.max(0, sent - sentBefore);
      onSignals?.(replica);
    }
    // Under traffic (ours, or moving gauges), or unhealthy: the fast rate. Otherwise back off.
    const busy = replica.inFlight > 0 || sent > 0 || changed || !healthy || markedDownMeanwhile;
    s.intervalMs = busy ? options.intervalMs : Math.min(s.intervalMs * 2, options.idleIntervalMs);
    replica.scrapeIntervalMs = s.intervalMs;
    s.dueAt = started + s.intervalMs;
  }

  /** Starts the scrapes that are due (within `concurrency`) and arms the timer for the next one. */
  function tick(): void {
    timer = undefined;
    timerAt = Number.POSITIVE_INFINITY;
    if (closed) return;
    const t = now();
    let next = Number.POSITIVE_INFINITY;
    // Due replicas, the longest overdue first, so that no place in the table starves when slots are few.
    const due: [Replica, ScrapeState][] = [];
    for (const r of replicas()) {
      const s = stateOf(r);
      if (s.running) continue;
      if (s.dueAt <= t) due.push([r, s]);
      else next = Math.min(next, s.dueAt);
    }
    due.sort((a, b) => a[1].dueAt - b[1].dueAt);
    // Those left without a slot wait for one to free (a finishing scrape re-ticks), not for a timer: a
    // timer for a past time would spin while every slot waits out its timeout.
    waiting = due.length > options.concurrency - running;
    for (const [r, s] of due.slice(0, Math.max(0, options.concurrency - running))) {
      s.running = true;
      running++;
      const round = scrape(r, s, false).finally(() => {
        s.running = false;
        running--;
        rounds.delete(round);
        arm(waiting ? now() : s.dueAt);
      });
      rounds.add(round);
    }
    // Never idle longer than idleIntervalMs, even with nothing to scrape: replicas discovered later (an
    // empty table at start, as with Kubernetes discovery before its first list) are found by then.
    arm(Math.min(next, t + options.idleIntervalMs));
  }

  /** Scrapes `replica` at the traffic rate from now on, the next time no later than `due`. */
  function bringForward(replica: Replica, s: ScrapeState, due: number): void {
    s.intervalMs = options.intervalMs;
    replica.scrapeIntervalMs = s.intervalMs;
    // A scrape in progress sees the request in flight (or the verdict) and keeps the rate by itself.
    if (!s.running && due < s.dueAt) {
      s.dueAt = due;
      arm(due);
    }
  }

  function arm(at: number): void {
    if (closed || at >= timerAt || !Number.isFinite(at)) return;
    clearTimeout(timer);
    timerAt = at;
    timer = setTimeout(tick, Math.max(0, at - now()));
  }

  timer = setTimeout(tick, 0);
  timerAt = now();

  return {
    async scrapeAll() {
      const queue = [...replicas()];
      const workers = Array.from({ length: Math.min(options.concurrency, queue.length) }, async () => {
        for (let r = queue.shift(); r !== undefined; r = queue.shift()) {
          const s = stateOf(r);
          await scrape(r, s, true);
        }
      });
      await Promise.all(workers);
    },
    touch(replica) {
      const s = stateOf(replica);
      if (s.intervalMs === options.intervalMs) return; // already at the traffic rate
      bringForward(replica, s, now() + options.intervalMs);
    },
    refresh() {
      arm(now());
    },
    suspect(replica) {
      const s = stateOf(replica);
      s.healthDue = true; // read by the next scrape (or the one running, if it has not read /health yet)
      bringForward(replica, s, now());
    },
    async close() {
      closed = true;
      clearTimeout(timer);
      await Promise.allSettled([...rounds]);
      await agent.close();
    },
  };
}
