/**
 * Hostile and careless clients against a live gateway, each with the bound it must hold, and the idle
 * invariant (test/helpers/idle.ts) after each:
 * - slowloris: HTTP/1.1 heads and bodies trickled, a partial HTTP/2 preface, a preface without SETTINGS,
 *   idle HTTP/2 sessions and keep-alive connections: closed at the configured timeouts;
 * - HTTP/2 rapid reset (HEADERS, DATA, RST_STREAM in a loop on one connection): other clients are served
 *   and nothing leaks;
 * - random model names and headers from unauthenticated callers: metric labels stay bounded;
 * - JSON nested 10,000 deep, a 1 MB model name: 400, nothing else;
 * - 1 MB of metadata on one stream: only that stream fails; `br` compression: UNIMPLEMENTED.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import * as http2 from "node:http2";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { stringify } from "yaml";
import { newKey } from "../../server/tenants/key-store.js";
import { type Harness, startHarness } from "../helpers/gateway-harness.js";
import { expectIdle, waitFor } from "../helpers/idle.js";
import { postJson } from "../helpers/sse.js";

const LIMITS = { headersTimeoutMs: 500, bodyTimeoutMs: 800, idleTimeoutMs: 800 };
const key = newKey({ tenant: "t" });
const auth = { authorization: `Bearer ${key.secret}` };
let h: Harness;
let dir: string;
let port: number;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "kinfer-attacks-"));
  const keysFile = join(dir, "keys.yaml");
  writeFileSync(keysFile, stringify({ keys: [key.record] }));
  h = await startHarness({
    models: { m: { stable: 2 } },
    engine: { decodeBaseMs: 1, decodeMsPerSeq: 0 },
    config: {
      tenants: { keysFile },
      connections: LIMITS,
      limits: { maxTokens: 8000 },
    },
  });
  port = Number(new URL(h.url).port);
});
afterAll(async () => {
  await h.close();
  rmSync(dir, { recursive: true, force: true });
});

/** A raw TCP connection; resolves with the time it stayed open once the gateway closes it. */
function rawConnection(send: (socket: net.Socket) => void): Promise<number> {
  return new Promise((resolve) => {
    const socket = net.connect(port, "127.0.0.1", () => send(socket));
    const opened = performance.now();
    socket.on("error", () => {});
    socket.on("data", () => {});
    socket.on("close", () => resolve(performance.now() - opened));
  });
}

const chatBody = (maxTokens: number) =>
  JSON.stringify({
    model: "m",
    stream: true,
    max_tokens: maxTokens,
    messages: [{ role: "user", content: "Hi" }],
  });

describe("slowloris and idle connections", () => {
  it("an HTTP/1.1 head sent one byte at a time is cut at headersTimeoutMs", async () => {
    const open = await rawConnection((s) => {
      const head = "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ";
      let i = 0;
      const t = setInterval(() => {
        if (s.destroyed) return clearInterval(t);
        s.write(head[i % head.length] as string);
        i++;
      }, 50);
    });
    expect(open).toBeGreaterThan(LIMITS.headersTimeoutMs * 0.8);
    expect(open).toBeLessThan(LIMITS.headersTimeoutMs + 2000);
  });

  it("a connection that never speaks, or sends half an HTTP/2 preface, is cut at headersTimeoutMs", async () => {
    const silent = rawConnection(() => {});
    const half = rawConnection((s) => s.write("PRI * HTTP/2"));
    for (const open of await Promise.all([silent, half]))
      expect(open).toBeLessThan(LIMITS.headersTimeoutMs + 2000);
  });

  it("an HTTP/2 preface without SETTINGS or streams is cut", async () => {
    const open = await rawConnection((s) => s.write("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
    expect(open).toBeLessThan(LIMITS.headersTimeoutMs + 2000);
  });

  it("an HTTP/1.1 body trickled one byte at a time gets 408 at bodyTimeoutMs", async () => {
    let answer = "";
    const open = await rawConnection((s) => {
      const body = chatBody(4);
      s.write(
        `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\nauthorization: ${auth.authorization}\r\ncontent-length: ${body.length}\r\n\r\n`,
      );
      s.on("data", (d) => {
        answer += d;
      });
      let i = 0;
      const t = setInterval(() => {
        if (s.destroyed || i >= body.length - 1) return clearInterval(t);
        s.write(body[i++] as string);
      }, 100);
    });
    expect(answer).toMatch(/^HTTP\/1.1 408/);
    expect(open).toBeLessThan(LIMITS.headersTimeoutMs + LIMITS.bodyTimeoutMs + 2000);
    await expectIdle(h);
  });

  it("an HTTP/2 stream whose body never ends is reset; its session's other streams are served", async () => {
    const session = http2.connect(h.url);
    session.on("error", () => {});
    const slow = session.request({
      ":method": "POST",
      ":path": "/kinfer.inference.v1.InferenceService/Generate",
      "content-type": "application/connect+json",
      ...auth,
    });
    slow.on("error", () => {});
    slow.write("{");
    const closed = new Promise<number>((resolve) => slow.on("close", () => resolve(slow.rstCode)));
    const ok = session.request({ ":path": "/healthz" });
    ok.resume();
    const status = await new Promise<number>((resolve) =>
      ok.on("response", (hd) => resolve(Number(hd[":status"]))),
    );
    expect(status).toBe(200);
    expect(await closed).toBeGreaterThan(0);
    session.destroy();
    await expectIdle(h);
  });

  it("200 idle HTTP/2 sessions and keep-alive connections are all closed after idleTimeoutMs", async () => {
    const before = h.gateway.connections;
    const sessions = await Promise.all(
      Array.from(
        { length: 200 },
        () =>
          new Promise<http2.ClientHttp2Session>((resolve) => {
            const s = http2.connect(h.url);
            s.on("error", () => {});
            const r = s.request({ ":path": "/healthz" });
            r.resume();
            r.on("end", () => resolve(s));
          }),
      ),
    );
    expect(h.gateway.connections).toBeGreaterThanOrEqual(200);
    await waitFor(
      () => sessions.every((s) => s.closed || s.destroyed),
      "idle sessions to be closed",
      LIMITS.idleTimeoutMs * 3 + 2000,
    );
    await waitFor(() => h.gateway.connections <= before, "the gateway's connections to drop back", 3000);
  });
});

describe("HTTP/2 rapid reset", () => {
  it("1,000 streams opened and reset on one connection: others are served, nothing leaks", async () => {
    const attacker = http2.connect(h.url);
    attacker.on("error", () => {});
    const body = chatBody(64);
    let opened = 0;
    for (let i = 0; i < 1000 && !attacker.closed && !attacker.destroyed; i++) {
      try {
        const s = attacker.request({
          ":method": "POST",
          ":path": "/v1/chat/completions",
          "content-type": "application/json",
          ...auth,
        });
        s.on("error", () => {});
        s.end(body);
        s.close(http2.constants.NGHTTP2_CANCEL);
        opened++;
      } catch {
        break; // the gateway sent GOAWAY
      }
      if (i % 50 === 0) await new Promise((r) => setImmediate(r));
    }
    expect(opened).toBeGreaterThan(100);
    // Meanwhile and after, an ordinary client is served.
    const res = await postJson(
      `${h.url}/v1/chat/completions`,
      { model: "m", max_tokens: 4, messages: [{ role: "user", content: "Hi" }] },
      { headers: auth },
    );
    expect(res.status).toBe(200);
    attacker.destroy();
    await expectIdle(h);
  });
});

describe("what unauthenticated callers choose", () => {
  it("2,000 random model names and headers: 401 each, metric labels bounded, /metrics serves", async () => {
    const random = () => Math.random().toString(36).slice(2);
    for (let i = 0; i < 2000; i += 50) {
      await Promise.all(
        Array.from({ length: 50 }, () =>
          postJson(
            `${h.url}/v1/chat/completions`,
            { model: random(), messages: [{ role: "user", content: "x" }] },
            {
              headers: { [`x-${random()}`]: random(), "x-session-id": random() },
            },
          ).then((r) => expect(r.status).toBe(401)),
        ),
      );
    }
    const metrics = await fetch(`${h.url}/metrics`);
    expect(metrics.status).toBe(200);
    const page = await metrics.text();
    const models = new Set([...page.matchAll(/model="([^"]*)"/g)].map((m) => m[1]));
    expect([...models].sort()).toEqual(["m", "unknown"]);
    const unknown = page
      .split("\n")
      .filter((l) => l.startsWith("kinfer_gateway_requests_total{") && l.includes('model="unknown"'))
      .reduce((n, l) => n + Number(l.slice(l.lastIndexOf(" ") + 1)), 0);
    expect(unknown).toBeGreaterThanOrEqual(2000);
  });
});

describe("huge and malformed input", () => {
  it("JSON nested 10,000 deep: 400", async () => {
    const deep = `{"model":"m","messages":${"[".repeat(10_000)}${"]".repeat(10_000)}}`;
    const res = await postJson(`${h.url}/v1/chat/completions`, deep, { headers: auth });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: { message: string } }).error.message).toMatch(/nested deeper/);
    const connect = await postJson(`${h.url}/kinfer.inference.v1.InferenceService/Chat`, deep, {
      headers: { ...auth, "content-type": "application/json", "connect-protocol-version": "1" },
    });
    expect(connect.status).toBeLessThan(500);
  });

  it("a 1 MB model name: 400, not echoed", async () => {
    const res = await postJson(
      `${h.url}/v1/chat/completions`,
      { model: "x".repeat(1_000_000), messages: [{ role: "user", content: "x" }] },
      { headers: auth },
    );
    expect(res.status).toBe(400);
    expect((await res.text()).length).toBeLessThan(1000);
    await expectIdle(h);
  });

  it("1 MB of metadata fails only its own stream; the connection's other streams go on", async () => {
    const session = http2.connect(h.url);
    session.on("error", () => {});
    const long = session.request({
      ":method": "POST",
      ":path": "/v1/chat/completions",
      "content-type": "application/json",
      ...auth,
    });
    long.on("error", () => {});
    let longText = "";
    long.on("data", (d) => {
      longText += d;
    });
    const longDone = new Promise<void>((resolve) => long.on("end", () => resolve()));
    long.end(chatBody(200));
    await waitFor(() => longText.length > 0, "the long stream's first token");
    const big = session.request({ ":path": "/healthz", "x-big": "y".repeat(1024 * 1024) });
    big.on("error", () => {});
    const bigStatus = await new Promise<string>((resolve) => {
      big.on("response", (hd) => resolve(String(hd[":status"])));
      big.on("close", () => resolve(`reset ${big.rstCode}`));
    });
    expect(bigStatus).not.toBe("200");
    await longDone;
    expect(longText).toContain("data: [DONE]");
    session.destroy();
    await expectIdle(h);
  });

  it("gRPC with br compression: UNIMPLEMENTED, and the accepted encodings", async () => {
    const session = http2.connect(h.url);
    session.on("error", () => {});
    const s = session.request({
      ":method": "POST",
      ":path": "/kinfer.inference.v1.InferenceService/Generate",
      "content-type": "application/grpc",
      te: "trailers",
      "grpc-encoding": "br",
      ...auth,
    });
    const head = Buffer.from([1, 0, 0, 0, 2, 0x0a, 0x00]);
    s.end(head);
    const status = await new Promise<{ status: string; accept: string }>((resolve) => {
      let accept = "";
      s.on("response", (hd) => {
        accept = String(hd["grpc-accept-encoding"] ?? "");
        if (hd["grpc-status"] !== undefined) resolve({ status: String(hd["grpc-status"]), accept });
      });
      s.on("trailers", (t) =>
        resolve({
          status: String(t["grpc-status"]),
          accept: accept || String(t["grpc-accept-encoding"] ?? ""),
        }),
      );
      s.resume();
    });
    expect(status.status).toBe("12");
    expect(status.accept).toMatch(/gzip/);
    session.destroy();
  });
});
