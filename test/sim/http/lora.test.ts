/**
 * The simulator's LoRA adapters over real HTTP, as vLLM serves them: adapters loaded at start and at run
 * time (/v1/load_lora_adapter, /v1/unload_lora_adapter, with vLLM's answers), listed by /v1/models under
 * their base model, used by naming them as the model (the official openai client), and reported by
 * vllm:lora_requests_info.
 */
import OpenAI from "openai";
import { afterAll, beforeAll, expect, it } from "vitest";
import { type SimServer, startSimServer } from "../../../sim/http/sim-server.js";
import { waitFor } from "../../helpers/idle.js";
import { postJson } from "../../helpers/sse.js";

const MODEL = "llama";
let replica: SimServer;
let openai: OpenAI;

beforeAll(async () => {
  replica = await startSimServer({
    model: MODEL,
    enableLora: true,
    loraModules: { sql: "/adapters/sql" },
    engine: { maxLoras: 1, decodeBaseMs: 5 },
  });
  openai = new OpenAI({ baseURL: `${replica.url}/v1`, apiKey: "unused", maxRetries: 0 });
});
afterAll(() => replica.close());

const ids = async () => (await openai.models.list()).data.map((m) => m.id);

it("loads, lists, serves and unloads adapters with vLLM's answers", async () => {
  expect(await ids()).toEqual([MODEL, "sql"]);
  const load = await postJson(`${replica.url}/v1/load_lora_adapter`, {
    lora_name: "chat",
    lora_path: "/a/chat",
  });
  expect(load.status).toBe(200);
  expect(await load.text()).toBe("Success: LoRA adapter 'chat' added successfully.");
  const again = await postJson(`${replica.url}/v1/load_lora_adapter`, {
    lora_name: "chat",
    lora_path: "/a/chat",
  });
  expect(again.status).toBe(400);
  expect((await postJson(`${replica.url}/v1/load_lora_adapter`, { lora_name: "x" })).status).toBe(400);
  const models = (await openai.models.list()).data as unknown as {
    id: string;
    parent: string | null;
    root: string;
  }[];
  expect(models.find((m) => m.id === "chat")).toMatchObject({ parent: MODEL, root: "/a/chat" });

  const reply = await openai.chat.completions.create({
    model: "chat",
    messages: [{ role: "user", content: "hi" }],
    max_tokens: 3,
  });
  expect(reply.model).toBe("chat");
  expect(reply.usage?.completion_tokens).toBe(3);
  expect(replica.engine.stats().loraLoads).toBe(1);

  const unload = await postJson(`${replica.url}/v1/unload_lora_adapter`, { lora_name: "chat" });
  expect(await unload.text()).toBe("Success: LoRA adapter 'chat' removed successfully.");
  expect((await postJson(`${replica.url}/v1/unload_lora_adapter`, { lora_name: "chat" })).status).toBe(404);
  expect(await ids()).toEqual([MODEL, "sql"]);
  const gone = await openai.chat.completions
    .create({ model: "chat", messages: [{ role: "user", content: "hi" }], max_tokens: 1 })
    .catch((e: unknown) => e);
  expect((gone as { status?: number }).status).toBe(404);
});

it("reports the adapters of running and waiting requests in vllm:lora_requests_info", async () => {
  // Two adapters, one slot: "sql" runs, "other" waits for it.
  await postJson(`${replica.url}/v1/load_lora_adapter`, { lora_name: "other", lora_path: "/a/other" });
  const long = (model: string) =>
    openai.chat.completions.create({ model, messages: [{ role: "user", content: "go" }], max_tokens: 200 });
  const running = long("sql");
  await waitFor(() => replica.engine.stats().runningLoras.includes("sql"), "sql running");
  const waiting = long("other");
  await waitFor(() => replica.engine.stats().waitingLoras.includes("other"), "other waiting");
  const page = await replica.metricsText();
  const line = page.split("\n").find((l) => l.startsWith("vllm:lora_requests_info{"));
  expect(line).toContain('running_lora_adapters="sql"');
  expect(line).toContain('waiting_lora_adapters="other"');
  expect(line).toContain('max_lora="1"');
  await Promise.all([running, waiting]);
});
