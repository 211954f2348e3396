/**
 * A client that stops reading (HTTP/2 window 0), against the gateway as its own process: while it reads
 * nothing, the replica keeps generating but the gateway stops reading it, so the bytes pile up in the
 * sockets between them and in the replica's buffers (backpressure reaches the replica; counted in
 * bytes: the gateway takes under 5% of what the replica produces, not inferred from its RSS, which the
 * garbage collector moves by megabytes); after
 * timeouts.slowReaderMs the client's stream is reset, the upstream request aborted, and the replica is
 * not blamed (no failure counted, no ejection). Nothing is left in flight.
 */
import { readFileSync } from "node:fs";
import * as http2 from "node:http2";
import { afterAll, beforeAll, expect, it } from "vitest";
import { type SimServer, startSimServer } from "../../sim/http/sim-server.js";
import { type GatewayProcess, startGatewayProcess } from "../helpers/gateway-process.js";
import { waitFor } from "../helpers/idle.js";

const SLOW_READER_MS = 4000;
let replica: SimServer;
let gateway: GatewayProcess;

beforeAll(async () => {
  // Fast steps: about 1,000 tokens (200 KB of SSE) a second toward a client that reads nothing.
  replica = await startSimServer({
    model: "m",
    engine: { decodeBaseMs: 0.1, decodeMsPerSeq: 0, meanOutputTokens: 100_000 },
  });
  gateway = await startGatewayProcess({
    logLevel: "warn",
    timeouts: { slowReaderMs: SLOW_READER_MS },
    limits: { maxTokens: 8000 },
    models: [{ name: "m", versions: [{ name: "stable", replicas: [replica.url] }] }],
  });
});
afterAll(async () => {
  await gateway?.stop();
  await replica?.close();
});

/** Bytes queued in the kernel on the TCP connections of a port (Linux /proc/net/tcp*): sent, not yet read. */
function kernelQueueBytes(port: number): number {
  let sum = 0;
  for (const file of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    let text = "";
    try {
      text = readFileSync(file, "utf8");
    } catch {
      continue;
    }
    for (const line of text.split("\n").slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length < 5) continue;
      const local = Number.parseInt((f[1] as string).split(":")[1] as string, 16);
      const remote = Number.parseInt((f[2] as string).split(":")[1] as string, 16);
      const [tx, rx] = (f[4] as string).split(":").map((x) => Number.parseInt(x, 16)) as [number, number];
      if (local === port) sum += tx;
      if (remote === port) sum += rx;
    }
  }
  return sum;
}

async function metric(name: string): Promise<number> {
  const page = await (await fetch(`${gateway.url}/metrics`)).text();
  return page
    .split("\n")
    .filter((l) => l.startsWith(name) && (l[name.length] === "{" || l[name.length] === " "))
    .reduce((n, l) => n + Number(l.slice(l.lastIndexOf(" ") + 1)), 0);
}

it("is cut after slowReaderMs; backpressure reaches the replica (the gateway stops taking its bytes), no replica blamed", async () => {
  // Warm the gateway up (its code, pools, first requests) before measuring its memory.
  for (let i = 0; i < 5; i++)
    await fetch(`${gateway.url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "m", prompt: "x", max_tokens: 50 }),
    });
  const session = http2.connect(gateway.url, { settings: { initialWindowSize: 1024 } });
  session.on("error", () => {});
  const stream = session.request({
    ":method": "POST",
    ":path": "/v1/chat/completions",
    "content-type": "application/json",
  });
  stream.on("error", () => {});
  let received = 0;
  stream.on("data", (d: Buffer) => {
    received += d.length;
    stream.pause(); // read one chunk, then never again
  });
  const closed = new Promise<number>((resolve) => stream.on("close", () => resolve(stream.rstCode)));
  stream.end(
    JSON.stringify({
      model: "m",
      stream: true,
      max_tokens: 8000,
      messages: [{ role: "user", content: "Hi" }],
    }),
  );
  await waitFor(() => received > 0, "the first token");
  const started = performance.now();
  await new Promise((r) => setTimeout(r, 1000));
  const rssBefore = gateway.rssBytes();
  const backlogBefore = kernelQueueBytes(replica.port) + replica.backlogBytes();
  const writtenBefore = replica.writtenBytes();
  await new Promise((r) => setTimeout(r, SLOW_READER_MS - 1800));
  const grown = gateway.rssBytes() - rssBefore;
  const backlogGrown = kernelQueueBytes(replica.port) + replica.backlogBytes() - backlogBefore;
  const produced = replica.writtenBytes() - writtenBefore;
  const taken = produced - backlogGrown;
  const generated = replica.engine.stats().generationTokens;
  console.log(
    `slow reader: ${generated} tokens generated; in the window the replica produced ${(produced / 1e6).toFixed(2)} MB, the gateway took ${(taken / 1e3).toFixed(1)} KB of it; gateway RSS ${grown >= 0 ? "+" : ""}${(grown / 1e6).toFixed(2)} MB`,
  );
  // The replica went on producing, and what it produced waits outside the gateway: in the sockets
  // between them and in the replica's own buffers. This is exact (byte counts, not memory, which moves
  // by megabytes with the garbage collector's timing); RSS is printed for the record.
  expect(backlogGrown).toBeGreaterThan(256 * 1024);
  expect(taken).toBeLessThan(Math.max(produced / 20, 16 * 1024));
  expect(await closed).toBe(http2.constants.NGHTTP2_CANCEL);
  const cutAfter = performance.now() - started;
  expect(cutAfter).toBeLessThan(SLOW_READER_MS + 2000);
  await waitFor(
    () => replica.engine.stats().running + replica.engine.stats().waiting === 0,
    "the replica's sequence to be aborted",
  );
  expect(await metric("kinfer_gateway_requests_in_flight")).toBe(0);
  expect(await metric("kinfer_gateway_ejections_total")).toBe(0);
  const page = await (await fetch(`${gateway.url}/metrics`)).text();
  expect(page).toMatch(/kinfer_gateway_replica_state\{[^}]*state="ready"\} 1/);
  session.destroy();
}, 30_000);
