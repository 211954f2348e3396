/**
 * The gateway as the program a cluster runs (bin/kinfer-gateway, its own process): the config file is
 * reloaded when it changes and each key is applied or named as needing a restart; the admin token rotates
 * without a restart (a new token in the config, or a new token file content as a rotated Secret gives);
 * SIGTERM drains: readiness goes first, streams that finish in time finish, and at the deadline the rest
 * end with a typed, retryable error (UNAVAILABLE, reason shutting_down) before the process exits, on time.
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { stringify } from "yaml";
import { AdminService } from "../../gen/es/kinfer/admin/v1/admin_pb.js";
import { type SimServer, startSimServer } from "../../sim/http/sim-server.js";
import { type GatewayProcess, startGatewayProcess } from "../helpers/gateway-process.js";
import { waitFor } from "../helpers/idle.js";
import { postJson, readSseData } from "../helpers/sse.js";

const TOKEN_A = "admin-token-aaaaaaaaaaaaaaaa";
const TOKEN_B = "admin-token-bbbbbbbbbbbbbbbb";
const TOKEN_C = "admin-token-cccccccccccccccc";
let replica: SimServer;

beforeAll(async () => {
  replica = await startSimServer({ model: "m", engine: { meanOutputTokens: 100_000 } });
});
afterAll(() => replica.close());

const config = (extra: Record<string, unknown> = {}) => ({
  logLevel: "info",
  models: [{ name: "m", versions: [{ name: "stable", replicas: [replica.url] }] }],
  ...extra,
});

async function adminCall(g: GatewayProcess, adminUrl: string, token: string): Promise<string> {
  const client = createClient(
    AdminService,
    createConnectTransport({ baseUrl: adminUrl, httpVersion: "1.1" }),
  );
  try {
    await client.listModels({}, { headers: { authorization: `Bearer ${token}` } });
    return "ok";
  } catch (err) {
    return String((err as { code: number }).code);
  } finally {
    void g;
  }
}

describe("config reload of the running program", () => {
  let g: GatewayProcess;
  let adminUrl: string;
  beforeAll(async () => {
    g = await startGatewayProcess(config({ admin: { host: "127.0.0.1", port: 0, token: TOKEN_A } }));
    adminUrl = g.adminUrl ?? "";
    expect(adminUrl).toMatch(/^http:/);
  });
  afterAll(() => g.stop());

  it("applies what can change at run time and names what needs a restart", async () => {
    writeFileSync(
      g.configFile,
      stringify({
        ...config({ admin: { host: "127.0.0.1", port: 0, token: TOKEN_A } }),
        listen: { host: "127.0.0.1", port: 0 },
        connections: { idleTimeoutMs: 5000 },
        timeouts: { firstTokenMs: 12_345 },
      }),
    );
    await waitFor(() => g.output().includes("config keys not applied"), "the reload's warning", 10_000).catch(
      (e) => {
        throw new Error(`${e}\n${g.output()}`);
      },
    );
    const applied = /"applied":\[([^\]]*)\][^\n]*"msg":"config applied"/.exec(g.output())?.[1] ?? "";
    expect(applied).toContain('"timeouts.firstTokenMs"');
    expect(g.output()).toMatch(/"notApplied":\["connections"\][^\n]*"msg":"config keys not applied/);
    // Still serving where it was.
    expect((await fetch(`${g.url}/healthz`)).status).toBe(200);
  });

  it("rotates the admin token from the config without a restart", async () => {
    expect(await adminCall(g, adminUrl, TOKEN_A)).toBe("ok");
    writeFileSync(g.configFile, stringify(config({ admin: { host: "127.0.0.1", port: 0, token: TOKEN_B } })));
    await waitFor(() => g.output().includes('"msg":"admin token rotated"'), "the rotation", 10_000);
    expect(await adminCall(g, adminUrl, TOKEN_B)).toBe("ok");
    expect(await adminCall(g, adminUrl, TOKEN_A)).toBe("16"); // UNAUTHENTICATED
  });

  it("rotates the admin token when its file changes, as a rotated Secret does", async () => {
    const tokenFile = join(g.configFile, "..", "admin-token");
    writeFileSync(tokenFile, `${TOKEN_B}\n`);
    writeFileSync(g.configFile, stringify(config({ admin: { host: "127.0.0.1", port: 0, tokenFile } })));
    // This reload's own line (no other test sets a token file), whatever the tests before it logged.
    await waitFor(
      () => /"applied":\[[^\]]*"admin\.tokenFile"[^\n]*"msg":"config applied"/.test(g.output()),
      "the reload",
      10_000,
    );
    writeFileSync(tokenFile, `${TOKEN_C}\n`);
    await waitFor(
      () => (g.output().match(/"why":"token file changed"/g) ?? []).length >= 1,
      "the file's rotation",
      10_000,
    );
    expect(await adminCall(g, adminUrl, TOKEN_C)).toBe("ok");
    expect(await adminCall(g, adminUrl, TOKEN_B)).toBe("16");
    // A bad file (too short a token) is refused and the token in force stays.
    writeFileSync(tokenFile, "short\n");
    await waitFor(() => g.output().includes("admin token not rotated"), "the refusal", 10_000);
    expect(await adminCall(g, adminUrl, TOKEN_C)).toBe("ok");
  });
});

describe("SIGTERM", () => {
  it("drains: finishes short streams, ends long ones with UNAVAILABLE shutting_down at the deadline, exits on time", async () => {
    const DRAIN_MS = 1500;
    const g = await startGatewayProcess(config({ timeouts: { drainMs: DRAIN_MS } }));
    const chat = (maxTokens: number) =>
      postJson(`${g.url}/v1/chat/completions`, {
        model: "m",
        stream: true,
        max_tokens: maxTokens,
        messages: [{ role: "user", content: "Hi" }],
      });
    const short = chat(20);
    const long = chat(8000);
    const [shortRes, longRes] = await Promise.all([short, long]);
    const started = performance.now();
    const exited = g.stop(DRAIN_MS + 10_000);
    await waitFor(() => true, "");
    const [shortEvents, longEvents] = await Promise.all([readSseData(shortRes), readSseData(longRes)]);
    const code = await exited;
    const took = performance.now() - started;
    expect(shortEvents.at(-1)).toBe("[DONE]");
    expect(shortEvents.some((e) => e.includes('"finish_reason":"length"'))).toBe(true);
    const error = longEvents.find((e) => e.includes('"error"'));
    expect(error).toContain('"code":"shutting_down"');
    expect(longEvents.at(-1)).toBe("[DONE]");
    expect(code).toBe(0);
    expect(took).toBeLessThan(DRAIN_MS + 3000);
  });
});
