/**
 * The gateway's life around requests: config validation and reload, TLS with ALPN and certificate reload,
 * graceful drain, first-token and inter-token timeouts, and outlier ejection.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as tls from "node:tls";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterEach, describe, expect, it } from "vitest";
import {
  Health,
  HealthCheckResponse_ServingStatus as Status,
} from "../../gen/es/grpc/health/v1/health_pb.js";
import { AdminService } from "../../gen/es/kinfer/admin/v1/admin_pb.js";
import {
  ErrorDetailSchema,
  ErrorReason,
  InferenceService,
} from "../../gen/es/kinfer/inference/v1/inference_pb.js";
import { ConfigError, loadGatewayConfig, parseGatewayConfig } from "../../server/config/gateway-config.js";
import { watchConfigFile } from "../../server/config/watch-config.js";
import { type Gateway, startGateway } from "../../server/gateway.js";
import type { Replica } from "../../server/replicas/replica.js";
import { type SimServer, startSimServer } from "../../sim/http/sim-server.js";
import { type Harness, startHarness } from "../helpers/gateway-harness.js";
import { metricSum, waitFor } from "../helpers/idle.js";

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

const client = (url: string) =>
  createClient(InferenceService, createConnectTransport({ baseUrl: url, httpVersion: "2" }));

async function stream(url: string, maxTokens: number) {
  let deltas = 0;
  try {
    for await (const r of client(url).generate({ model: "m", prompt: "hello", sampling: { maxTokens } })) {
      if (r.event.case === "delta") deltas++;
    }
    return { deltas, error: undefined };
  } catch (err) {
    return { deltas, error: ConnectError.from(err) };
  }
}

describe("config", () => {
  it("names every bad key, unknown keys included", () => {
    expect(() =>
      parseGatewayConfig({
        listen: { port: 99999 },
        retry: { maxAttempt: 2 },
        models: [{ name: "m", versions: [{ name: "Stable!", replicas: ["not a url"] }] }],
      }),
    ).toThrow(ConfigError);
    const twoBadKeys = () =>
      parseGatewayConfig({
        retry: { maxAttempt: 2 },
        models: [{ name: "m", versions: [{ name: "s", weight: -1 }] }],
      });
    // One error names both: the unknown key and the bad value.
    expect(twoBadKeys).toThrow(/retry.*maxAttempt/);
    expect(twoBadKeys).toThrow(/models\.0\.versions\.0\.weight/);
    expect(() =>
      parseGatewayConfig({ models: [{ name: "m", versions: [{ name: "a" }, { name: "a" }] }] }),
    ).toThrow(/duplicate version/);
  });

  it("reports YAML errors with the file name", async () => {
    const dir = mkdtempSync(join(tmpdir(), "kinfer-config-"));
    try {
      writeFileSync(join(dir, "g.yaml"), "models: [unclosed");
      await expect(loadGatewayConfig(join(dir, "g.yaml"))).rejects.toThrow(/g\.yaml: not valid YAML/);
    } finally {
      rmSync(dir, { recursive: true });
    }
  });

  it("the shipped local config is valid", async () => {
    const config = await loadGatewayConfig(
      new URL("../../deploy/local/gateway.yaml", import.meta.url).pathname,
    );
    expect(config.models.map((m) => m.name)).toEqual(["llama-3-8b", "qwen-2.5-7b"]);
  });

  it("reloads the file when it changes, and keeps the running config when the new one is invalid", async () => {
    const dir = mkdtempSync(join(tmpdir(), "kinfer-config-"));
    const file = join(dir, "gateway.yaml");
    const yaml = (weight: number) =>
      `models:\n  - name: m\n    versions:\n      - name: s\n        weight: ${weight}\n        replicas: [http://127.0.0.1:1]\n`;
    writeFileSync(file, yaml(1));
    const seen: number[] = [];
    const errors: string[] = [];
    const watcher = watchConfigFile(
      file,
      await loadGatewayConfig(file),
      (c) => seen.push(c.models[0]?.versions[0]?.weight ?? -1),
      (e) => errors.push(e.message),
      20,
    );
    try {
      await new Promise((r) => setTimeout(r, 100));
      writeFileSync(file, yaml(7));
      await waitFor(() => seen.includes(7), "the reload");
      writeFileSync(file, "models: 3");
      await waitFor(() => errors.length > 0, "the invalid file's error");
      expect(errors[0]).toMatch(/models/);
      expect(seen).toEqual([7]);
    } finally {
      watcher.close();
      rmSync(dir, { recursive: true });
    }
  });

  it("applying a new config changes weights and replicas without losing replica state", async () => {
    h = await startHarness({ models: { m: { stable: 2 } } });
    const before = h.gateway.table.replicas();
    (before[0] as Replica).consecutiveFailures = 2;
    const extra = await startSimServer({ model: "m" });
    try {
      const urls = [...before.map((r) => r.url), extra.url];
      h.gateway.applyConfig(
        parseGatewayConfig({
          logLevel: "silent",
          models: [{ name: "m", versions: [{ name: "stable", weight: 3, replicas: urls }] }],
        }),
      );
      expect(h.gateway.table.replicas()).toHaveLength(3);
      expect(h.gateway.table.replicas()[0]).toBe(before[0]);
      expect(h.gateway.table.model("m")?.versions[0]?.weight).toBe(3);
    } finally {
      await extra.close();
    }
  });
});

describe("TLS", () => {
  function makeCert(dir: string, cn: string) {
    execFileSync(
      "openssl",
      [
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "1",
        "-subj",
        `/CN=${cn}`,
        "-addext",
        "subjectAltName=IP:127.0.0.1",
        "-keyout",
        join(dir, "key.pem"),
        "-out",
        join(dir, "cert.pem"),
      ],
      { stdio: "ignore" },
    );
  }

  function alpn(
    port: number,
    protocols: string[],
    ca: string,
  ): Promise<{ protocol: string | false; cn: string }> {
    return new Promise((resolve, reject) => {
      const socket = tls.connect({ host: "127.0.0.1", port, ALPNProtocols: protocols, ca }, () => {
        const cn = String(socket.getPeerCertificate().subject?.CN);
        resolve({ protocol: socket.alpnProtocol ?? false, cn });
        socket.end();
      });
      socket.on("error", reject);
    });
  }

  it("negotiates h2 and http/1.1 on one port, serves both, and reloads its certificate (config reload, file change)", async () => {
    const dir = mkdtempSync(join(tmpdir(), "kinfer-tls-"));
    let gateway: Gateway | undefined;
    const replica = await startSimServer({ model: "m" });
    try {
      makeCert(dir, "first");
      const config = parseGatewayConfig({
        logLevel: "silent",
        listen: {
          host: "127.0.0.1",
          port: 0,
          tls: { certFile: join(dir, "cert.pem"), keyFile: join(dir, "key.pem") },
        },
        models: [{ name: "m", versions: [{ name: "s", replicas: [replica.url] }] }],
      });
      gateway = await startGateway({ config });
      expect(gateway.url).toMatch(/^https:/);
      const ca = readFileSync(join(dir, "cert.pem"), "utf8");
      expect(await alpn(gateway.port, ["h2"], ca)).toEqual({ protocol: "h2", cn: "first" });
      expect(await alpn(gateway.port, ["http/1.1"], ca)).toEqual({ protocol: "http/1.1", cn: "first" });
      const transport = createConnectTransport({
        baseUrl: gateway.url,
        httpVersion: "2",
        nodeOptions: { ca },
      });
      let deltas = 0;
      for await (const r of createClient(InferenceService, transport).generate({
        model: "m",
        prompt: "hi",
        sampling: { maxTokens: 3 },
      })) {
        if (r.event.case === "delta") deltas++;
      }
      expect(deltas).toBeGreaterThan(0);
      const h1 = createConnectTransport({ baseUrl: gateway.url, httpVersion: "1.1", nodeOptions: { ca } });
      expect((await createClient(InferenceService, h1).listModels({})).models).toHaveLength(1);

      makeCert(dir, "second");
      gateway.applyConfig(config);
      expect((await alpn(gateway.port, ["h2"], readFileSync(join(dir, "cert.pem"), "utf8"))).cn).toBe(
        "second",
      );
      // Rotated on disk with no config reload (cert-manager renewing a mounted Secret): served once the
      // files change, the key and the certificate written one after the other as openssl writes them.
      makeCert(dir, "third");
      const third = readFileSync(join(dir, "cert.pem"), "utf8");
      await waitFor(
        async () => (await alpn(gateway?.port ?? 0, ["h2"], third).catch(() => ({ cn: "" }))).cn === "third",
        "the rotated certificate",
      );
    } finally {
      await gateway?.close();
      await replica.close();
      rmSync(dir, { recursive: true });
    }
  });
  it("the admin port with mutual TLS: a client certificate from the configured CA and the token are both needed", async () => {
    const dir = mkdtempSync(join(tmpdir(), "kinfer-mtls-"));
    const openssl = (args: string[]) => execFileSync("openssl", args, { cwd: dir, stdio: "ignore" });
    const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let gateway: Gateway | undefined;
    try {
      makeCert(dir, "gateway-admin"); // the server's certificate: cert.pem, key.pem
      openssl([
        "req",
        "-x509",
        ...ec,
        "-days",
        "1",
        "-subj",
        "/CN=operators-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
      ]);
      openssl(["req", ...ec, "-subj", "/CN=operator", "-keyout", "client.key", "-out", "client.csr"]);
      openssl([
        "x509",
        "-req",
        "-in",
        "client.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-out",
        "client.pem",
      ]);
      // A certificate from another CA (self-signed) must be refused.
      openssl([
        "req",
        "-x509",
        ...ec,
        "-days",
        "1",
        "-subj",
        "/CN=stranger",
        "-keyout",
        "stranger.key",
        "-out",
        "stranger.pem",
      ]);
      const token = "admin-token-for-mtls-0123456789";
      gateway = await startGateway({
        config: parseGatewayConfig({
          logLevel: "silent",
          listen: { host: "127.0.0.1", port: 0 },
          admin: {
            host: "127.0.0.1",
            port: 0,
            token,
            tls: {
              certFile: join(dir, "cert.pem"),
              keyFile: join(dir, "key.pem"),
              clientCaFile: join(dir, "ca.pem"),
            },
          },
          models: [{ name: "m", versions: [{ name: "s" }] }],
        }),
      });
      const read = (f: string) => readFileSync(join(dir, f), "utf8");
      const adminClient = (certs: { cert?: string; key?: string }, bearer: string | null = token) =>
        createClient(
          AdminService,
          createConnectTransport({
            baseUrl: gateway?.adminUrl as string,
            httpVersion: "2",
            nodeOptions: { ca: read("cert.pem"), ...certs },
            interceptors: [
              (next) => (req) => {
                if (bearer !== null) req.header.set("authorization", `Bearer ${bearer}`);
                return next(req);
              },
            ],
          }),
        );
      expect(gateway.adminUrl).toMatch(/^https:/);
      const client = { cert: read("client.pem"), key: read("client.key") };
      const ok = await adminClient({ cert: read("client.pem"), key: read("client.key") }).listModels({});
      expect(ok.models.map((m) => m.name)).toEqual(["m"]);
      // The right certificate is not enough: without the token, or with a wrong one, UNAUTHENTICATED.
      await expect(adminClient(client, null).listModels({})).rejects.toMatchObject({
        code: Code.Unauthenticated,
      });
      await expect(adminClient(client, "not-the-token-0123456789").listModels({})).rejects.toMatchObject({
        code: Code.Unauthenticated,
      });
      // The token is not enough: no certificate, or one from another CA, fails the TLS handshake itself.
      // Seen at the TLS layer (the server's alert), where nothing else can be mistaken for it.
      const { port } = new URL(gateway.adminUrl as string);
      const handshake = (certs: { cert?: string; key?: string }) =>
        new Promise<string>((resolve) => {
          const socket = tls.connect({
            host: "127.0.0.1",
            port: Number(port),
            ca: read("cert.pem"),
            ALPNProtocols: ["h2"],
            ...certs,
          });
          const timer = setTimeout(() => {
            socket.destroy();
            resolve("open");
          }, 1000);
          socket.on("error", (err) => {
            clearTimeout(timer);
            resolve(err.message);
          });
          socket.on("close", () => {
            clearTimeout(timer);
            resolve("closed");
          });
        });
      expect(await handshake(client)).toBe("open");
      // Refused: the server's alert, or its close of the connection right after the handshake.
      expect(await handshake({})).toMatch(/certificate required|alert|closed/i);
      expect(await handshake({ cert: read("stranger.pem"), key: read("stranger.key") })).toMatch(
        /unknown ca|alert|closed/i,
      );
      for (const certs of [{}, { cert: read("stranger.pem"), key: read("stranger.key") }])
        await expect(adminClient(certs).listModels({})).rejects.toBeInstanceOf(ConnectError);
    } finally {
      await gateway?.close();
      rmSync(dir, { recursive: true });
    }
  });
});

describe("graceful drain", () => {
  // Long natural replies, so that max_tokens decides every stream's length.
  const engine = { meanOutputTokens: 100_000, maxModelLen: 300_000, numGpuBlocks: 100_000 };

  it("reports NOT_SERVING at once and lets in-flight streams finish", async () => {
    h = await startHarness({ models: { m: { stable: 1 } }, engine });
    const health = createClient(Health, createConnectTransport({ baseUrl: h.url, httpVersion: "2" }));
    const watch = health.watch({ service: "" })[Symbol.asyncIterator]();
    expect((await watch.next()).value?.status).toBe(Status.SERVING);
    const inFlight = stream(h.url, 100); // ~0.7 s of tokens
    await waitFor(() => (h as Harness).gateway.pipeline.inFlight > 0, "the stream in flight");
    const drained = h.gateway.drain(10_000);
    expect((await watch.next()).value?.status).toBe(Status.NOT_SERVING);
    const result = await inFlight;
    expect(result.error).toBeUndefined();
    expect(result.deltas).toBe(100);
    await drained;
    h = undefined; // closed by the drain; only the replicas are left
  });

  it("cuts streams still running at the drain deadline", async () => {
    h = await startHarness({ models: { m: { stable: 1 } }, engine });
    const inFlight = stream(h.url, 4000);
    await waitFor(() => (h as Harness).gateway.pipeline.inFlight > 0, "the stream in flight");
    const started = performance.now();
    await h.gateway.drain(300);
    expect(performance.now() - started).toBeLessThan(1500);
    const result = await inFlight;
    expect(result.error).toBeDefined();
    expect(result.deltas).toBeGreaterThan(0);
  });
});

describe("timeouts", () => {
  it("first-token timeout: retried on another replica, then UNAVAILABLE when all stall", async () => {
    h = await startHarness({ models: { m: { stable: 2 } }, config: { timeouts: { firstTokenMs: 300 } } });
    const [a, b] = h.all() as [SimServer, SimServer];
    await h.setFaults([a], { stall: 1, stallMs: 3000 });
    for (let i = 0; i < 4; i++) expect((await stream(h.url, 3)).error).toBeUndefined();
    // They succeeded because they were retried: the stalled replica got attempts (its engine ran them;
    // the stall held their tokens back), the other served all four, and the gateway counted the retries.
    const retries = metricSum(await (await fetch(`${h.url}/metrics`)).text(), "kinfer_gateway_retries_total");
    const finished = async (r: SimServer, reason?: string) =>
      metricSum(
        (await (await fetch(`${r.url}/metrics`)).text())
          .split("\n")
          .filter((l) => reason === undefined || l.includes(`finished_reason="${reason}"`))
          .join("\n"),
        "vllm:request_success_total",
      );
    expect(retries).toBeGreaterThanOrEqual(1);
    expect(await finished(a)).toBe(retries);
    expect(await finished(b, "length")).toBe(4);
    await h.setFaults([b as never], { stall: 1, stallMs: 3000 });
    const started = performance.now();
    const r = await stream(h.url, 3);
    expect(r.error?.code).toBe(Code.Unavailable);
    expect(r.error?.findDetails(ErrorDetailSchema)[0]?.reason).toBe(ErrorReason.UPSTREAM_TIMEOUT);
    expect(performance.now() - started).toBeLessThan(1500);
  });

  it("inter-token timeout: the stream ends with UNAVAILABLE after its partial text", async () => {
    h = await startHarness({
      models: { m: { stable: 1 } },
      config: { timeouts: { interTokenMs: 300 } },
      engine: { meanOutputTokens: 10_000 },
    });
    await h.setFaults(h.all(), { stall: 1, stallMs: 3000, stallAfterTokens: 4 });
    const r = await stream(h.url, 50);
    expect(r.deltas).toBe(4);
    expect(r.error?.findDetails(ErrorDetailSchema)[0]?.reason).toBe(ErrorReason.UPSTREAM_TIMEOUT);
  });
});

describe("outlier ejection", () => {
  it("ejects a failing replica after consecutive failures, but never the last one", async () => {
    h = await startHarness({
      models: { m: { stable: 2 } },
      config: { routing: { algorithm: "round-robin" }, ejection: { consecutiveFailures: 3, baseMs: 60_000 } },
    });
    const [bad, good] = h.all();
    await h.setFaults([bad as never], { status: 1, statusCode: 500 });
    for (let i = 0; i < 12; i++) expect((await stream(h.url, 2)).error).toBeUndefined();
    const metrics = await (await fetch(`${h.url}/metrics`)).text();
    expect(metrics).toMatch(/kinfer_gateway_ejections_total\{[^}]*\} 1/);
    expect(metrics).toMatch(/kinfer_gateway_replica_state\{[^}]*state="ejected"\} 1/);
    // Now the good one fails too: it is the last eligible replica, so it is never ejected.
    await h.setFaults([good as never], { status: 1, statusCode: 500 });
    for (let i = 0; i < 6; i++) expect((await stream(h.url, 2)).error?.code).toBe(Code.Unavailable);
    const states = h.gateway.table.replicas().map((r) => r.ejectedUntil > performance.now());
    expect(states.filter(Boolean)).toHaveLength(1);
  });
});
