/**
 * LoRA adapters through the gateway (issue 23, part 2), on simulated vLLM replicas that hold one adapter
 * in a batch (--max-loras 1, a load costs time): the admin API loads and unloads an adapter on every
 * replica of a model; /v1/models (the openai npm client) and ListModels list base models and adapters;
 * a request naming an adapter runs on its model's replicas with it (the openai client, Connect, grpc-js,
 * the SDK), preferring the replica where it is loaded and, for another adapter, one with a free slot;
 * adapters declared in the config or discovered on the replicas route the same way; bad admin input is
 * refused; the gateway is idle after each test.
 */
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AdminService } from "../../gen/es/kinfer/admin/v1/admin_pb.js";
import { InferenceService, Role } from "../../gen/es/kinfer/inference/v1/inference_pb.js";
import * as tsProto from "../../gen/grpc-js/kinfer/inference/v1/inference.js";
import { createKinferClient } from "../../sdk/src/client.js";
import { createNodeTransport } from "../../sdk/src/node.js";
import type { SimServer } from "../../sim/http/sim-server.js";
import { type Harness, startHarness } from "../helpers/gateway-harness.js";
import { expectIdle, waitFor } from "../helpers/idle.js";

const MODEL = "llama";
const TOKEN = "admin-token-for-lora-tests-01234";
const auth = { authorization: `Bearer ${TOKEN}` };
let h: Harness;
let openai: OpenAI;

beforeAll(async () => {
  h = await startHarness({
    models: { [MODEL]: { stable: 2 } },
    sim: { enableLora: true },
    engine: { maxLoras: 1, loraLoadMs: 30, decodeBaseMs: 5 },
    config: {
      admin: { host: "127.0.0.1", port: 0, token: TOKEN },
      scrape: { intervalMs: 20, idleIntervalMs: 200 },
    },
  });
  openai = new OpenAI({ baseURL: `${h.url}/v1`, apiKey: "none", maxRetries: 0 });
});
afterAll(() => h?.close());

const admin = () =>
  createClient(
    AdminService,
    createConnectTransport({ baseUrl: h.gateway.adminUrl as string, httpVersion: "1.1" }),
  );
const replicas = () => h.all();
/** Prompt tokens per replica (the engine's own count, taken when a request arrives). */
const prompts = () => replicas().map((r) => r.engine.stats().promptTokens);
const chat = (model: string, maxTokens: number) =>
  openai.chat.completions.create({
    model,
    messages: [{ role: "user", content: "hello" }],
    max_tokens: maxTokens,
  });

it("the admin API loads an adapter on every replica; /v1/models and ListModels list it under its model; it serves on every surface", async () => {
  const loaded = await admin().loadAdapter(
    { model: MODEL, adapter: "sql", path: "/adapters/sql" },
    { headers: auth },
  );
  expect(loaded.replicas).toHaveLength(2);
  expect(loaded.replicas.every((r) => r.ok)).toBe(true);
  // Again: every replica has it already, which is what was asked.
  const again = await admin().loadAdapter(
    { model: MODEL, adapter: "sql", path: "/adapters/sql" },
    { headers: auth },
  );
  expect(again.replicas.every((r) => r.ok)).toBe(true);

  const models = (await openai.models.list()).data as unknown as { id: string; parent?: string }[];
  expect(models.map((m) => m.id)).toEqual([MODEL, "sql"]);
  expect(models[1]?.parent).toBe(MODEL);
  const connect = createClient(
    InferenceService,
    createConnectTransport({ baseUrl: h.url, httpVersion: "2" }),
  );
  expect((await connect.listModels({})).models[0]?.adapters).toEqual(["sql"]);

  const before = replicas().map((r) => r.engine.stats().loraLoads);
  const reply = await chat("sql", 3);
  expect(reply.model).toBe("sql");
  expect(reply.usage?.completion_tokens).toBe(3);
  // It ran with the adapter: one replica loaded it.
  const after = replicas().map((r) => r.engine.stats().loraLoads);
  expect(after.reduce((a, b) => a + b, 0) - before.reduce((a, b) => a + b, 0)).toBe(1);

  let text = "";
  for await (const res of connect.chat({
    model: "sql",
    messages: [{ role: Role.USER, content: "hi" }],
    sampling: { maxTokens: 2 },
  }))
    if (res.event.case === "delta") text += res.event.value.text;
  expect(text.length).toBeGreaterThan(0);
  const sdk = createKinferClient({ transport: createNodeTransport({ baseUrl: h.url }) });
  const viaSdk = await sdk
    .chat({ model: "sql", messages: [{ role: Role.USER, content: "hi" }], sampling: { maxTokens: 2 } })
    .collect();
  expect(viaSdk.finish?.usage?.completionTokens).toBe(2);
  const client = new tsProto.InferenceServiceClient(
    h.url.replace("http://", ""),
    grpc.credentials.createInsecure(),
  );
  const viaGrpc = await new Promise<number>((resolve, reject) => {
    let tokens = 0;
    const call = client.generate(
      tsProto.GenerateRequest.fromPartial({ model: "sql", prompt: "x", sampling: { maxTokens: 2 } }),
    );
    call.on("data", (e: tsProto.GenerateResponse) => {
      if (e.event?.$case === "delta") tokens += e.event.delta.tokenCount;
    });
    call.on("end", () => resolve(tokens));
    call.on("error", reject);
  });
  client.close();
  expect(viaGrpc).toBe(2);
  await expectIdle(h);
});

it("an adapter's requests go where it is loaded; another adapter's go to the replica with a free slot", async () => {
  await admin().loadAdapter({ model: MODEL, adapter: "chat", path: "/adapters/chat" }, { headers: auth });
  // A long "sql" stream makes "sql" the loaded adapter of one replica (one slot each).
  const long = chat("sql", 400);
  let home: SimServer | undefined;
  await waitFor(() => {
    home = replicas().find((r) => r.engine.stats().runningLoras.includes("sql"));
    return home !== undefined;
  }, "sql running on a replica");
  const other = replicas().find((r) => r !== home) as SimServer;
  // The gateway sees it in vllm:lora_requests_info within a scrape interval.
  await waitFor(
    () =>
      h.gateway.table
        .replicas()
        .some((r) => r.url === home?.url && r.signals?.lora?.running.includes("sql") === true),
    "the gateway seeing sql loaded",
  );
  const at = (counts: number[], r: SimServer) => counts[replicas().indexOf(r)] as number;
  const before = prompts();
  await Promise.all(Array.from({ length: 6 }, () => chat("sql", 2)));
  const mid = prompts();
  expect(at(mid, home as SimServer)).toBeGreaterThan(at(before, home as SimServer));
  expect(at(mid, other)).toBe(at(before, other));
  // "chat" would wait behind "sql" on its home: it goes to the other replica, whose slot is free.
  await Promise.all(Array.from({ length: 4 }, () => chat("chat", 2)));
  const last = prompts();
  expect(at(last, home as SimServer)).toBe(at(mid, home as SimServer));
  expect(at(last, other)).toBeGreaterThan(at(mid, other));
  await long;
  await expectIdle(h);
});

it("unloading an adapter removes it from the replicas and the lists; its requests are then NOT_FOUND", async () => {
  const res = await admin().unloadAdapter({ model: MODEL, adapter: "chat" }, { headers: auth });
  expect(res.replicas.every((r) => r.ok)).toBe(true);
  expect((await openai.models.list()).data.map((m) => m.id)).toEqual([MODEL, "sql"]);
  const gone = await chat("chat", 1).catch((e: unknown) => e);
  expect((gone as { status?: number }).status).toBe(404);
  await expectIdle(h);
});

it("bad admin input is refused and reaches no replica", async () => {
  const calls: [Promise<unknown>, Code][] = [
    [admin().loadAdapter({ model: "nope", adapter: "a", path: "/a" }, { headers: auth }), Code.NotFound],
    [admin().loadAdapter({ model: MODEL, adapter: "", path: "/a" }, { headers: auth }), Code.InvalidArgument],
    [
      admin().loadAdapter({ model: MODEL, adapter: "x".repeat(300), path: "/a" }, { headers: auth }),
      Code.InvalidArgument,
    ],
    [
      admin().loadAdapter({ model: MODEL, adapter: "a b", path: "/a" }, { headers: auth }),
      Code.InvalidArgument,
    ],
    [
      admin().loadAdapter({ model: MODEL, adapter: MODEL, path: "/a" }, { headers: auth }),
      Code.InvalidArgument,
    ],
    [admin().loadAdapter({ model: MODEL, adapter: "a", path: "" }, { headers: auth }), Code.InvalidArgument],
    [admin().loadAdapter({ model: MODEL, adapter: "a", path: "/a" }), Code.Unauthenticated],
  ];
  for (const [call, code] of calls)
    expect(ConnectError.from(await call.catch((e: unknown) => e)).code).toBe(code);
  expect((await openai.models.list()).data.map((m) => m.id)).toEqual([MODEL, "sql"]);
});

describe("declared and discovered adapters", () => {
  let d: Harness;
  beforeAll(async () => {
    d = await startHarness({
      models: { base: { stable: 1 }, other: { stable: 1 } },
      sim: { enableLora: true, loraModules: { declared: "/a/declared", found: "/a/found" } },
      modelConfig: { base: { adapters: ["declared"] }, other: { discoverAdapters: true } },
      config: { scrape: { healthIntervalMs: 1000 } },
    });
  });
  afterAll(() => d?.close());

  it("a declared adapter routes to its model at once; a discovered one once the replica's /v1/models is read", async () => {
    const client = new OpenAI({ baseURL: `${d.url}/v1`, apiKey: "none", maxRetries: 0 });
    const ask = (model: string) =>
      client.chat.completions.create({ model, messages: [{ role: "user", content: "x" }], max_tokens: 1 });
    expect((await ask("declared")).model).toBe("declared");
    // "found" is on both replicas (--lora-modules), but only "other" discovers it: routed to other's replica.
    await waitFor(
      async () => (await client.models.list()).data.some((m) => m.id === "found"),
      "found discovered",
    );
    const otherReplica = d.replicas.get("other/stable")?.[0] as SimServer;
    const before = otherReplica.engine.stats().generationTokens;
    expect((await ask("found")).model).toBe("found");
    expect(otherReplica.engine.stats().generationTokens).toBe(before + 1);
    await expectIdle(d);
  });
});

describe("adapters that replicas lack", () => {
  let x: Harness;
  const TOKEN_X = "admin-token-for-lora-lacking-0123";
  beforeAll(async () => {
    x = await startHarness({
      models: { m: { stable: 1, canary: 2 }, v: { stable: 1, canary: 1 } },
      sim: { enableLora: true },
      modelConfig: { v: { discoverAdapters: true } },
      config: {
        admin: { host: "127.0.0.1", port: 0, token: TOKEN_X },
        scrape: { healthIntervalMs: 1000 },
        // One failure held against a replica would eject it: the tests show none is.
        ejection: { consecutiveFailures: 1 },
      },
    });
  });
  afterAll(() => x?.close());
  const ask = (model: string) =>
    new OpenAI({ baseURL: `${x.url}/v1`, apiKey: "none", maxRetries: 0 }).chat.completions.create({
      model,
      messages: [{ role: "user", content: "x" }],
      max_tokens: 1,
    });
  const ejections = async () =>
    (await x.gateway.metrics.registry.metrics())
      .split("\n")
      .filter((l) => l.startsWith("kinfer_gateway_ejections_total"))
      .reduce((n, l) => n + Number(l.split(" ").at(-1)), 0);

  it("a replica that answers 404 for an adapter it lost is forgotten for it, the request served elsewhere, the replica not ejected", async () => {
    const adminX = createClient(
      AdminService,
      createConnectTransport({ baseUrl: x.gateway.adminUrl as string, httpVersion: "1.1" }),
    );
    await adminX.loadAdapter(
      { model: "m", adapter: "lost", path: "/a/lost" },
      { headers: { authorization: `Bearer ${TOKEN_X}` } },
    );
    // One canary replica loses it behind the gateway's back (a restart, say).
    const victim = x.replicas.get("m/canary")?.[0] as SimServer;
    await fetch(`${victim.url}/v1/unload_lora_adapter`, {
      method: "POST",
      body: JSON.stringify({ lora_name: "lost" }),
    });
    const gatewayView = () => x.gateway.table.replicas().find((r) => r.url === victim.url);
    const before = await ejections();
    for (let i = 0; i < 60 && gatewayView()?.adapters.has("lost"); i++)
      expect((await ask("lost")).model).toBe("lost");
    expect(gatewayView()?.adapters.has("lost")).toBe(false);
    expect(await ejections()).toBe(before);
    expect((await ask("m")).model).toBe("m"); // the replica still serves its model
    await expectIdle(x);
  });

  it("a request for an adapter only one version has is never sent to the other", async () => {
    const stable = x.replicas.get("v/stable")?.[0] as SimServer;
    const canary = x.replicas.get("v/canary")?.[0] as SimServer;
    await fetch(`${stable.url}/v1/load_lora_adapter`, {
      method: "POST",
      body: JSON.stringify({ lora_name: "only-stable", lora_path: "/a/s" }),
    });
    await waitFor(
      () => x.gateway.table.replicas().some((r) => r.url === stable.url && r.adapters.has("only-stable")),
      "the adapter discovered",
    );
    const canaryBefore = canary.engine.stats().promptTokens;
    for (let i = 0; i < 10; i++) expect((await ask("only-stable")).model).toBe("only-stable");
    expect(canary.engine.stats().promptTokens).toBe(canaryBefore);
    await expectIdle(x);
  });
});
