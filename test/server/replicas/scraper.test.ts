/**
 * The scraper's rate follows traffic and its health verdicts need evidence: an idle replica is asked at
 * most about once a second (its /metrics, and /health every healthIntervalMs); a request sent to it brings
 * the next scrape within intervalMs; one slow scrape never marks it unhealthy, `unhealthyAfter` in a row
 * do, and a 503 from /health does at once. The replica is a real HTTP server serving a vLLM metrics page,
 * which the test can make slow or not ready.
 */
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { afterEach, expect, it } from "vitest";
import { createReplica, freshSignals } from "../../../server/replicas/replica.js";
import { type Scraper, startScraper } from "../../../server/replicas/scraper.js";
import { waitFor } from "../../helpers/idle.js";

const now = () => performance.now();
const options = {
  intervalMs: 100,
  idleIntervalMs: 1000,
  healthIntervalMs: 5000,
  unhealthyAfter: 3,
  timeoutMs: 200,
  concurrency: 4,
};

const servers: http.Server[] = [];
let scraper: Scraper | undefined;
afterEach(async () => {
  await scraper?.close();
  for (const server of servers.splice(0)) {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
});

/** A replica whose /metrics and /health answer as the test says; counts what it is asked. */
async function fakeReplica() {
  const state = { running: 0, delayMs: 0, healthStatus: 200, metrics: 0, health: 0, asked: 0 };
  const replicaServer = http.createServer((req, res) => {
    state.asked++;
    const answer = () => {
      if (req.url === "/health") {
        state.health++;
        res.writeHead(state.healthStatus).end();
      } else {
        state.metrics++;
        res.end(
          `# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{model_name="m"} ${state.running}\n` +
            `vllm:num_requests_waiting{model_name="m"} 0\nvllm:kv_cache_usage_perc{model_name="m"} 0.1\n`,
        );
      }
    };
    if (state.delayMs > 0) setTimeout(answer, state.delayMs);
    else answer();
  });
  servers.push(replicaServer);
  await new Promise<void>((r) => replicaServer.listen(0, "127.0.0.1", r));
  const url = `http://127.0.0.1:${(replicaServer.address() as AddressInfo).port}`;
  return { state, replica: createReplica("m", "stable", url, "static") };
}

it("asks an idle replica about once a second, and follows traffic within intervalMs", async () => {
  const { state, replica } = await fakeReplica();
  scraper = startScraper(() => [replica], options, now);
  await waitFor(() => replica.signals !== undefined, "the first scrape");
  await new Promise((r) => setTimeout(r, 2500)); // backed off to the idle interval
  const before = state.metrics + state.health;
  await new Promise((r) => setTimeout(r, 3000));
  const perSecond = (state.metrics + state.health - before) / 3;
  expect(perSecond).toBeLessThanOrEqual(1.5);
  expect(replica.healthy).toBe(true);
  // Idle and unchanged, its signals are still trusted between scrapes.
  expect(freshSignals(replica, now(), 200)).toBeDefined();

  // Traffic: the relay sends a request and touches the replica; the next scrape comes within intervalMs
  // and routing sees the load the replica reports.
  state.running = 5;
  const sent = now();
  replica.inFlight++;
  replica.sentSinceScrape++;
  scraper.touch(replica);
  await waitFor(() => replica.signals?.running === 5, "a scrape after the request");
  expect(now() - sent).toBeLessThan(options.intervalMs + 60);
  // While it has traffic, it is scraped at the traffic rate.
  const busyBefore = state.metrics;
  await new Promise((r) => setTimeout(r, 1000));
  expect(state.metrics - busyBefore).toBeGreaterThanOrEqual(6);
  replica.inFlight--;
});

it("a request that finished between scrapes keeps the replica at the traffic rate (it is read before the scrape resets it)", async () => {
  const { state, replica } = await fakeReplica();
  scraper = startScraper(() => [replica], options, now);
  await waitFor(() => replica.scrapeIntervalMs === options.idleIntervalMs, "backed off", 5000);
  // A short request came and went (nothing in flight at the scrape), and the gauges did not move.
  replica.sentSinceScrape++;
  scraper.touch(replica);
  const seen = state.metrics;
  await waitFor(() => state.metrics > seen && replica.sentSinceScrape === 0, "the scrape after it");
  expect(replica.scrapeIntervalMs).toBe(options.intervalMs);
});

it("a slow scrape that answers after the relay marked the replica down does not bring it back", async () => {
  const { state, replica } = await fakeReplica();
  scraper = startScraper(() => [replica], options, now);
  await waitFor(() => replica.healthy === true, "healthy");
  replica.inFlight++; // traffic: scraped every 100 ms
  scraper.touch(replica);
  state.delayMs = options.timeoutMs / 2; // slow, but within the timeout
  const asked = state.asked;
  await waitFor(() => state.asked > asked, "a scrape under way");
  // The relay's connection was refused meanwhile: it marks the replica down. The replica is dying.
  replica.healthy = false;
  state.healthStatus = 503;
  const answered = state.metrics;
  await waitFor(() => state.metrics > answered, "the slow scrape's answer");
  await new Promise((r) => setTimeout(r, 20)); // the scraper takes it in
  expect(replica.healthy).toBe(false);
  // The scrapes after it read /health (503): still down. Back up, it comes back within a few intervals.
  await new Promise((r) => setTimeout(r, 400));
  expect(replica.healthy).toBe(false);
  state.delayMs = 0;
  state.healthStatus = 200;
  await waitFor(() => replica.healthy === true, "healthy again", 2000);
  replica.inFlight--;
});

it("one slow scrape does not mark a replica unhealthy; unhealthyAfter in a row do; it comes back at once", async () => {
  const { state, replica } = await fakeReplica();
  const changes: boolean[] = [];
  scraper = startScraper(
    () => [replica],
    options,
    now,
    (_, healthy) => changes.push(healthy),
  );
  await waitFor(() => replica.healthy === true, "healthy");
  replica.inFlight++; // traffic: scraped every 100 ms
  scraper.touch(replica);
  state.delayMs = options.timeoutMs + 100; // the next scrape times out...
  const seen = state.metrics;
  await waitFor(() => state.metrics > seen, "a slow scrape");
  state.delayMs = 0; // ...and the ones after it are fine
  await new Promise((r) => setTimeout(r, 600));
  expect(changes).toEqual([true]);
  expect(replica.healthy).toBe(true);

  state.delayMs = options.timeoutMs + 100; // now every scrape times out
  await waitFor(() => replica.healthy === false, "unhealthy after consecutive failures", 5000);
  state.delayMs = 0;
  await waitFor(() => replica.healthy === true, "healthy again", 5000);
  expect(changes).toEqual([true, false, true]);
  replica.inFlight--;
});

it("a 503 from /health marks the replica unhealthy at the next health read, and /health is re-read until 200", async () => {
  const { state, replica } = await fakeReplica();
  scraper = startScraper(() => [replica], options, now);
  await waitFor(() => replica.healthy === true, "healthy");
  state.healthStatus = 503;
  await scraper.scrapeAll();
  expect(replica.healthy).toBe(false);
  state.healthStatus = 200;
  await waitFor(() => replica.healthy === true, "healthy again", 3000);
});

it("a replica the relay suspects, idle and backed off, has /health read at once, and is routed to again within intervalMs of coming back", async () => {
  const { state, replica } = await fakeReplica();
  scraper = startScraper(() => [replica], options, now);
  await waitFor(() => replica.healthy === true, "healthy");
  await new Promise((r) => setTimeout(r, 1600)); // idle: backed off to the idle interval (1 s)
  // A restarted engine still loading: the relay's request got a 503.
  state.healthStatus = 503;
  const healthBefore = state.health;
  const found = now();
  scraper.suspect(replica);
  await waitFor(() => replica.healthy === false, "unhealthy after the relay's suspicion");
  expect(now() - found).toBeLessThan(options.intervalMs);
  expect(state.health).toBe(healthBefore + 1);
  // While it says 503 it is asked at the traffic rate, /health every time, though nothing is sent to it.
  const asked = state.health;
  await new Promise((r) => setTimeout(r, 1000));
  expect(state.health - asked).toBeGreaterThanOrEqual(6);
  // Loaded: routed to again within one scrape interval.
  state.healthStatus = 200;
  const up = now();
  await waitFor(() => replica.healthy === true, "healthy again");
  expect(now() - up).toBeLessThan(options.intervalMs + 100);
});

it("replicas that appear after start (an empty table at first, as with Kubernetes discovery) are scraped", async () => {
  const { replica } = await fakeReplica();
  const list: (typeof replica)[] = [];
  scraper = startScraper(() => list, options, now);
  await new Promise((r) => setTimeout(r, 300)); // its first round found nothing
  list.push(replica);
  // Without being told: within the idle interval.
  await waitFor(() => replica.signals !== undefined, "the new replica scraped", options.idleIntervalMs + 500);
  // Told (the gateway calls refresh when its routing table changes): at once.
  const { replica: second } = await fakeReplica();
  list.push(second);
  const told = now();
  scraper.refresh();
  await waitFor(() => second.signals !== undefined, "the second replica scraped");
  expect(now() - told).toBeLessThan(options.intervalMs);
});

it("replicas that time out and hold every slot do not starve the others (the longest overdue goes first)", async () => {
  const slow = await fakeReplica();
  const fast = await fakeReplica();
  slow.state.delayMs = 10_000; // every scrape of it waits out timeoutMs
  slow.replica.inFlight = 1; // traffic: both due every intervalMs
  fast.replica.inFlight = 1;
  scraper = startScraper(() => [slow.replica, fast.replica], { ...options, concurrency: 1 }, now);
  await new Promise((r) => setTimeout(r, 2000));
  // One slot, a 200 ms timeout on the slow one: the fast one still gets about every other slot.
  expect(fast.state.metrics).toBeGreaterThanOrEqual(4);
  expect(fast.replica.healthy).toBe(true);
});
