/**
 * Tenants' API keys against a gateway in front of simulated replicas: requests need a valid key when keys
 * are configured (Connect and the openai client), a key sees only its models, limits hold under
 * concurrent load with exact accounting (requests, tokens, streams), revocation takes effect on the next
 * request, keys are managed through the admin API and by editing the keys file, and a tenant key is
 * refused on the admin port.
 */
import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { toJson } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse, stringify } from "yaml";
import { AdminService, ListApiKeysResponseSchema } from "../../../gen/es/kinfer/admin/v1/admin_pb.js";
import {
  ErrorDetailSchema,
  ErrorReason,
  InferenceService,
  Priority,
} from "../../../gen/es/kinfer/inference/v1/inference_pb.js";
import { type ApiKeyRecord, hashSecret, newKey, parseKeysFile } from "../../../server/tenants/key-store.js";
import { type Harness, startHarness } from "../../helpers/gateway-harness.js";
import { waitFor } from "../../helpers/idle.js";

const run = promisify(execFile);
const ADMIN_TOKEN = "admin-token-for-tests-0123456789";
let h: Harness;
let dir: string;
let keysFile: string;
const keys: Record<string, { record: ApiKeyRecord; secret: string }> = {};

function writeKeys() {
  writeFileSync(keysFile, stringify({ keys: Object.values(keys).map((k) => k.record) }));
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "kinfer-keys-"));
  keysFile = join(dir, "keys.yaml");
  keys.open = newKey({ tenant: "open" });
  keys.onlyA = newKey({ tenant: "team-a", allowedModels: ["a"] });
  keys.onlySql = newKey({ tenant: "team-sql", allowedModels: ["sql-a"] });
  keys.rpm = newKey({ tenant: "rpm", limits: { requestsPerMinute: 30 } });
  keys.tpm = newKey({ tenant: "tpm", limits: { tokensPerMinute: 2000 } });
  keys.settle = newKey({ tenant: "settle", limits: { tokensPerMinute: 2000 } });
  keys.streams = newKey({ tenant: "streams", limits: { maxConcurrentStreams: 3 } });
  keys.revoke = newKey({ tenant: "revoked-later" });
  writeKeys();
  h = await startHarness({
    models: { a: { stable: 2 }, b: { stable: 1 }, short: { stable: 2 } },
    // Replies that end by themselves after a few tokens, far short of max_tokens: what a request reserved
    // and what it used differ, so settlement can be seen.
    modelEngine: { short: { meanOutputTokens: 3 } },
    // Model a has two LoRA adapters; its replicas serve sql-a.
    modelConfig: { a: { adapters: ["sql-a", "chat-a"] } },
    sim: { enableLora: true, loraModules: { "sql-a": "/adapters/sql-a" } },
    config: {
      tenants: { keysFile },
      admin: { host: "127.0.0.1", port: 0, token: ADMIN_TOKEN },
      limits: { maxTokens: 8192, defaultMaxTokens: 64 },
    },
  });
});
afterAll(async () => {
  await h.close();
  rmSync(dir, { recursive: true, force: true });
});

const withKey =
  (key: string) =>
  (next: Parameters<import("@connectrpc/connect").Interceptor>[0]) =>
  (req: Parameters<Parameters<import("@connectrpc/connect").Interceptor>[0]>[0]) => {
    if (key !== "") req.header.set("authorization", `Bearer ${key}`);
    return next(req);
  };
const inference = (key: string) =>
  createClient(
    InferenceService,
    createConnectTransport({ baseUrl: h.url, httpVersion: "2", interceptors: [withKey(key)] }),
  );
const admin = (token = ADMIN_TOKEN) =>
  createClient(
    AdminService,
    createConnectTransport({
      baseUrl: h.gateway.adminUrl as string,
      httpVersion: "2",
      interceptors: [withKey(token)],
    }),
  );
const openai = (key: string) => new OpenAI({ baseURL: `${h.url}/v1`, apiKey: key, maxRetries: 0 });

/** Runs one Generate; returns its usage, or the error. */
async function generate(key: string, model = "a", maxTokens = 8, prompt = "hello there") {
  try {
    let usage = 0;
    for await (const res of inference(key).generate({ model, prompt, sampling: { maxTokens } })) {
      if (res.event.case === "finish") {
        const u = res.event.value.usage;
        usage = (u?.promptTokens ?? 0) + (u?.completionTokens ?? 0);
      }
    }
    return { usage };
  } catch (err) {
    return { error: ConnectError.from(err) };
  }
}

async function metric(name: string, labels: string): Promise<number> {
  const text = await (await fetch(`${h.url}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${name}{${labels}}`));
  return Number(line?.split(" ").at(-1) ?? 0);
}

describe("authentication", () => {
  it("without a key, or with a wrong one: UNAUTHENTICATED (Connect) and 401 (OpenAI)", async () => {
    expect((await generate("")).error?.code).toBe(Code.Unauthenticated);
    const wrong = await generate("kfr_not-a-real-key-000000000000000000000000000");
    expect(wrong.error?.code).toBe(Code.Unauthenticated);
    expect(wrong.error?.findDetails(ErrorDetailSchema)[0]?.reason).toBe(ErrorReason.UNAUTHENTICATED);
    await expect(
      openai("kfr_wrong").chat.completions.create({
        model: "a",
        messages: [{ role: "user", content: "hi" }],
      }),
    ).rejects.toMatchObject({ status: 401, type: "authentication_error" });
    const res = await fetch(`${h.url}/v1/models`);
    expect(res.status).toBe(401);
    expect(((await res.json()) as { error: { type: string } }).error.type).toBe("authentication_error");
  });

  it("a valid key works on every surface", async () => {
    expect((await generate(keys.open?.secret as string)).usage).toBeGreaterThan(0);
    const chat = await openai(keys.open?.secret as string).chat.completions.create({
      model: "b",
      max_tokens: 4,
      messages: [{ role: "user", content: "hi" }],
    });
    expect(chat.usage?.completion_tokens).toBe(4);
  });

  it("a key sees and uses only its models: others are NOT_FOUND, as if they did not exist", async () => {
    const key = keys.onlyA?.secret as string;
    expect((await generate(key, "a")).usage).toBeGreaterThan(0);
    expect((await generate(key, "b")).error?.code).toBe(Code.NotFound);
    const listed = await inference(key).listModels({});
    expect(listed.models.map((m) => m.name)).toEqual(["a"]);
    const page = await openai(key).models.list();
    // With its LoRA adapters, listed as vLLM lists them.
    expect(page.data.map((m) => m.id)).toEqual(["a", "chat-a", "sql-a"]);
    expect((await inference(keys.open?.secret as string).listModels({})).models).toHaveLength(3);
  });

  it("a key that names a LoRA adapter uses and sees that adapter only, not its base model nor its other adapters", async () => {
    const key = keys.onlySql?.secret as string;
    expect((await generate(key, "sql-a")).usage).toBeGreaterThan(0);
    // Refused by the key, before any replica (one would answer chat-a, which none has loaded, with its
    // own NOT_FOUND: "no replica serves ...").
    for (const model of ["a", "chat-a", "b"]) {
      const { error } = await generate(key, model);
      expect(error?.code).toBe(Code.NotFound);
      expect(error?.rawMessage).toBe(`model "${model}" is not served here`);
    }
    const listed = await inference(key).listModels({});
    expect(listed.models.map((m) => [m.name, m.adapters])).toEqual([["a", ["sql-a"]]]);
    const page = await openai(key).models.list();
    expect(page.data.map((m) => m.id)).toEqual(["sql-a"]);
    // A key for the base model has its adapters too.
    const a = keys.onlyA?.secret as string;
    expect((await generate(a, "sql-a")).error).toBeUndefined();
    expect((await inference(a).listModels({})).models.map((m) => m.adapters)).toEqual([["chat-a", "sql-a"]]);
  });

  it("a tenant key on the admin port: PERMISSION_DENIED; no token: UNAUTHENTICATED", async () => {
    await expect(admin(keys.open?.secret as string).listModels({})).rejects.toMatchObject({
      code: Code.PermissionDenied,
    });
    await expect(admin("").listModels({})).rejects.toMatchObject({ code: Code.Unauthenticated });
  });
});

describe("limits under concurrent load", () => {
  it("requests per minute: exactly the bucket's worth is admitted, the rest get 429 with retry-after", async () => {
    const key = keys.rpm?.secret as string;
    const started = performance.now();
    const results = await Promise.all(Array.from({ length: 80 }, () => generate(key, "a", 2)));
    const seconds = (performance.now() - started) / 1000;
    const admitted = results.filter((r) => r.error === undefined).length;
    // 30 at once, plus what refills (0.5 a second) while the burst runs.
    expect(admitted).toBeGreaterThanOrEqual(30);
    expect(admitted).toBeLessThanOrEqual(30 + Math.floor(seconds * 0.5) + 1);
    const refused = results.filter((r) => r.error !== undefined);
    for (const r of refused) {
      expect(r.error?.code).toBe(Code.ResourceExhausted);
      const detail = r.error?.findDetails(ErrorDetailSchema)[0];
      expect(detail?.reason).toBe(ErrorReason.RATE_LIMITED);
      expect(
        Number(detail?.retryAfter?.seconds ?? 0) * 1000 + (detail?.retryAfter?.nanos ?? 0) / 1e6,
      ).toBeGreaterThan(0);
    }
    expect(await metric("kinfer_gateway_tenant_requests_total", 'tenant="rpm",result="admitted"')).toBe(
      admitted,
    );
    expect(await metric("kinfer_gateway_tenant_requests_total", 'tenant="rpm",result="rate_limited"')).toBe(
      80 - admitted,
    );
    // The OpenAI surface answers 429 with Retry-After.
    const res = await fetch(`${h.url}/v1/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
      body: JSON.stringify({ model: "a", prompt: "x", max_tokens: 1 }),
    });
    expect(res.status).toBe(429);
    expect(Number(res.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
  });

  it("tokens per minute: settlement charges what the replicas report and gives back the rest of each reservation", async () => {
    const key = keys.settle?.secret as string;
    // Each request reserves ceil(40 / 4) + 100 = 110 tokens of a 2,000 budget, and uses about 13: charged
    // at its reservation, at most 18 would pass; charged what it used, all 60 do.
    const results = [];
    for (let i = 0; i < 60; i++) results.push(await generate(key, "short", 100, "x".repeat(40)));
    expect(results.filter((r) => r.error !== undefined).map((r) => r.error?.message)).toEqual([]);
    // The oracle: the tokens the replicas themselves counted (their vLLM metrics), which only this
    // tenant's requests reached.
    let replicaTokens = 0;
    for (const r of h.replicas.get("short/stable") ?? []) {
      const text = await (await fetch(`${r.url}/metrics`)).text();
      for (const name of ["vllm:prompt_tokens_total", "vllm:generation_tokens_total"])
        replicaTokens += text
          .split("\n")
          .filter((l) => l.startsWith(`${name}{`))
          .reduce((sum, l) => sum + Number(l.split(" ").at(-1)), 0);
    }
    expect(replicaTokens).toBeGreaterThan(60 * 10);
    expect(replicaTokens).toBeLessThan(60 * 110);
    expect(await metric("kinfer_gateway_tenant_tokens_total", 'tenant="settle"')).toBe(replicaTokens);
  });

  // What a request is charged at settlement is proved by the test above (against the replicas' own counts,
  // with replies far shorter than their reservations); here every reply uses its whole reservation.
  it("tokens per minute: reservations hold the limit, and the tenant is charged what its clients were told", async () => {
    const key = keys.tpm?.secret as string;
    // Each request reserves ceil(40 / 4) + 100 = 110 tokens; 2,000 hold 18 of them.
    const prompt = "x".repeat(40);
    const started = performance.now();
    const results = await Promise.all(Array.from({ length: 40 }, () => generate(key, "a", 100, prompt)));
    const seconds = (performance.now() - started) / 1000;
    const ok = results.filter((r) => r.error === undefined);
    expect(ok.length).toBeGreaterThanOrEqual(18);
    // Plus what refills (33 tokens a second) while the burst runs: one more request per 3.3 s.
    expect(ok.length).toBeLessThanOrEqual(18 + Math.floor((seconds * 2000) / 60 / 110) + 1);
    for (const r of results.filter((r) => r.error !== undefined))
      expect(r.error?.findDetails(ErrorDetailSchema)[0]?.reason).toBe(ErrorReason.TOKEN_BUDGET_EXHAUSTED);
    // The tenant's charge agrees with the usage its clients were told.
    const used = ok.reduce((sum, r) => sum + (r.usage ?? 0), 0);
    expect(await metric("kinfer_gateway_tenant_tokens_total", 'tenant="tpm"')).toBe(used);
    // A request that could never fit the budget is refused with no retry-after.
    const huge = await generate(key, "a", 4000);
    expect(huge.error?.code).toBe(Code.ResourceExhausted);
    expect(huge.error?.findDetails(ErrorDetailSchema)[0]?.retryAfter).toBeUndefined();
  });

  it("concurrent streams: beyond the limit, TOO_MANY_STREAMS; when streams end, new ones pass", async () => {
    const key = keys.streams?.secret as string;
    const results = await Promise.all(Array.from({ length: 10 }, () => generate(key, "a", 200)));
    const ok = results.filter((r) => r.error === undefined).length;
    expect(ok).toBe(3);
    for (const r of results.filter((r) => r.error !== undefined))
      expect(r.error?.findDetails(ErrorDetailSchema)[0]?.reason).toBe(ErrorReason.TOO_MANY_STREAMS);
    expect(await metric("kinfer_gateway_tenant_streams", 'tenant="streams"')).toBe(0);
    expect((await generate(key, "a", 2)).error).toBeUndefined();
  });
});

describe("managing keys", () => {
  it("the admin API creates, lists (never a secret) and revokes keys, and writes them to the file", async () => {
    const created = await admin().createApiKey({
      tenant: "new-team",
      allowedModels: ["b"],
      limits: { requestsPerMinute: 100 },
    });
    expect(created.secret).toMatch(/^kfr_/);
    expect(created.key?.secretPrefix).toBe(created.secret.slice(0, 8));
    expect((await generate(created.secret, "b")).usage).toBeGreaterThan(0);
    const onDisk = parseKeysFile(readFileSync(keysFile, "utf8"), keysFile);
    const stored = onDisk.find((k) => k.id === created.key?.id);
    expect(stored?.sha256).toBe(hashSecret(created.secret));
    expect(readFileSync(keysFile, "utf8")).not.toContain(created.secret);
    const listed = await admin().listApiKeys({ tenant: "new-team" });
    expect(listed.keys.map((k) => k.id)).toEqual([created.key?.id]);
    expect(JSON.stringify(toJson(ListApiKeysResponseSchema, listed))).not.toContain(created.secret.slice(8));
    await expect(admin().createApiKey({ tenant: "" })).rejects.toMatchObject({ code: Code.InvalidArgument });
    await expect(admin().createApiKey({ tenant: "t", allowedModels: ["nope"] })).rejects.toMatchObject({
      code: Code.InvalidArgument,
    });
    // An adapter's name is a model a key may be given (that adapter only).
    const forAdapter = await admin().createApiKey({ tenant: "sql-team", allowedModels: ["sql-a"] });
    expect(forAdapter.key?.allowedModels).toEqual(["sql-a"]);
    expect((await generate(forAdapter.secret, "sql-a")).error).toBeUndefined();
    expect((await generate(forAdapter.secret, "a")).error?.code).toBe(Code.NotFound);
    await expect(admin().revokeApiKey({ id: "key_missing" })).rejects.toMatchObject({ code: Code.NotFound });
    // Flow control's per-key defaults: the criticality of requests that name none, and the fair share.
    expect(created.key).toMatchObject({ priority: Priority.STANDARD, weight: 1 });
    const batch = await admin().createApiKey({ tenant: "batch", priority: Priority.SHEDDABLE, weight: 0.5 });
    expect(batch.key).toMatchObject({ priority: Priority.SHEDDABLE, weight: 0.5 });
    const batchOnDisk = parseKeysFile(readFileSync(keysFile, "utf8"), keysFile).find(
      (k) => k.tenant === "batch",
    );
    expect(batchOnDisk).toMatchObject({ priority: "sheddable", weight: 0.5 });
    for (const weight of [-1, 1001, Number.NaN])
      await expect(admin().createApiKey({ tenant: "t", weight })).rejects.toMatchObject({
        code: Code.InvalidArgument,
      });
    await expect(admin().createApiKey({ tenant: "t", priority: 9 as Priority })).rejects.toMatchObject({
      code: Code.InvalidArgument,
    });
  });

  it("revoking a key takes effect on the next request", async () => {
    const key = keys.revoke?.secret as string;
    expect((await generate(key)).error).toBeUndefined();
    const revoked = await admin().revokeApiKey({ id: keys.revoke?.record.id as string });
    expect(revoked.key?.revokedAt).toBeDefined();
    expect((await generate(key)).error?.code).toBe(Code.Unauthenticated);
    const all = await admin().listApiKeys({ includeRevoked: true });
    expect(all.keys.find((k) => k.id === keys.revoke?.record.id)?.revokedAt).toBeDefined();
    expect((await admin().listApiKeys({})).keys.some((k) => k.id === keys.revoke?.record.id)).toBe(false);
  });

  it("a key made by `npm run keys` and added to the file (or to a mounted Secret) works once reloaded", async () => {
    const { stdout, stderr } = await run(
      process.execPath,
      [
        "--import",
        "tsx",
        "server/tenants/keys-cli.ts",
        "create",
        "--tenant",
        "by-hand",
        "--models",
        "a",
        "--rpm",
        "600",
        "--priority",
        "critical",
        "--weight",
        "2",
      ],
      { cwd: new URL("../../..", import.meta.url).pathname },
    );
    const secret = /kfr_\S+/.exec(stderr)?.[0] as string;
    const [entry] = parse(stdout) as ApiKeyRecord[];
    expect(entry).toMatchObject({
      tenant: "by-hand",
      allowedModels: ["a"],
      limits: { requestsPerMinute: 600 },
      priority: "critical",
      weight: 2,
    });
    expect(entry?.sha256).toBe(hashSecret(secret));
    const added = { record: entry as ApiKeyRecord, secret };
    const onDisk = parseKeysFile(readFileSync(keysFile, "utf8"), keysFile);
    writeFileSync(keysFile, stringify({ keys: [...onDisk, added.record] }));
    const until = Date.now() + 5000;
    let result = await generate(added.secret);
    while (result.error !== undefined && Date.now() < until) {
      await new Promise((r) => setTimeout(r, 50));
      result = await generate(added.secret);
    }
    expect(result.error).toBeUndefined();
    // A broken file is reported (waited for: the rejection is counted) and the keys in force stay.
    const rejected = () => metric("kinfer_gateway_reloads_total", 'source="keys",result="rejected"');
    const before = await rejected();
    writeFileSync(keysFile, "keys: [{id: 'no spaces allowed'}]");
    await waitFor(async () => (await rejected()) > before, "the broken keys file rejected");
    expect((await generate(added.secret)).error).toBeUndefined();
  });
});
