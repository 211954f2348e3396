/**
 * Loading and unloading a LoRA adapter on every replica of a model, for the admin API's LoadAdapter and
 * UnloadAdapter: vLLM's POST /v1/load_lora_adapter {lora_name, lora_path} and /v1/unload_lora_adapter
 * {lora_name} (the replicas need VLLM_ALLOW_RUNTIME_LORA_UPDATING=True), all replicas at once, each given
 * LOAD_TIMEOUT_MS. What each replica has afterwards is recorded on it (Replica.adapters), so routing sends
 * the adapter's requests only where it is.
 */
import { request } from "undici";
import type { Replica } from "../replicas/replica.js";
import type { ModelEntry } from "../routing/routing-table.js";

/** How long one replica may take to load an adapter (a download from a hub can take this long). */
const LOAD_TIMEOUT_MS = 120_000;
/** Largest answer read from a replica. */
const MAX_ANSWER = 64 * 1024;

export interface AdapterOutcome {
  readonly replicaId: string;
  readonly ok: boolean;
  readonly message: string;
}

export function loadAdapter(model: ModelEntry, adapter: string, path: string): Promise<AdapterOutcome[]> {
  return Promise.all(
    replicasOf(model).map(async (r) => {
      const answer = await post(r, "/v1/load_lora_adapter", { lora_name: adapter, lora_path: path });
      // A replica that has it already (loaded at start, or by an earlier call) has what was asked.
      const ok = answer.status === 200 || (answer.status === 400 && /already been loaded/.test(answer.text));
      if (ok) r.adapters = new Set([...r.adapters, adapter]);
      return { replicaId: r.id, ok, message: answer.text };
    }),
  );
}

export function unloadAdapter(model: ModelEntry, adapter: string): Promise<AdapterOutcome[]> {
  return Promise.all(
    replicasOf(model).map(async (r) => {
      const answer = await post(r, "/v1/unload_lora_adapter", { lora_name: adapter });
      // A replica that does not have it has what was asked; a 404 for the endpoint itself (runtime
      // updates not allowed there) does not.
      const ok = answer.status === 200 || (answer.status === 404 && /cannot be found/.test(answer.text));
      if (ok) r.adapters = new Set([...r.adapters].filter((a) => a !== adapter));
      return { replicaId: r.id, ok, message: answer.text };
    }),
  );
}

function replicasOf(model: ModelEntry): Replica[] {
  return model.versions.flatMap((v) => [...v.replicas]);
}

/** The replica's status and answer (cut to 300 characters); status 0 when it could not be reached. */
async function post(r: Replica, path: string, body: unknown): Promise<{ status: number; text: string }> {
  try {
    const res = await request(`${r.url}${path}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(LOAD_TIMEOUT_MS),
    });
    let text = "";
    for await (const chunk of res.body) {
      text += (chunk as Buffer).toString("utf8");
      if (text.length > MAX_ANSWER) {
        res.body.destroy();
        break;
      }
    }
    return { status: res.statusCode, text: text.slice(0, 300) };
  } catch (err) {
    return { status: 0, text: `unreachable: ${(err as Error).message}`.slice(0, 300) };
  }
}
