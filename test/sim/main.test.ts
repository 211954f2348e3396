/**
 * kinfer-sim's command line, run as the program (bin/kinfer-sim): one server as `vllm serve` starts one
 * (--port, --model or the model as an argument, --served-model-name, vLLM's engine flags), a fleet
 * (--replicas, --base-port), help text in aligned columns with every flag's argument, bad flags
 * reported by name with exit status 2, and SIGTERM: an abort by default, a drain with --shutdown-timeout
 * (vLLM 0.18's flag, which deploy/'s vLLM Deployments pass, with others the simulator ignores).
 */
import { execFile, spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { startSimProcess } from "../helpers/sim-process.js";

const root = new URL("../..", import.meta.url).pathname;
const sim = (args: string[]) =>
  promisify(execFile)(`${root}bin/kinfer-sim`, args, { cwd: root }).then(
    (r) => ({ code: 0, ...r }),
    (e: { code: number; stdout: string; stderr: string }) => e,
  );

/**
 * Starts `bin/kinfer-sim args`, opens a stream of 300 tokens, sends SIGTERM after its first chunk, then
 * asks for a new completion: resolves with what the stream received, the new request's status (or the
 * error), and the exit code.
 */
async function sigtermMidStream(args: string[]) {
  const child = spawn(`${root}bin/kinfer-sim`, args, { stdio: ["ignore", "pipe", "pipe"] });
  const url = await new Promise<string>((resolve, reject) => {
    child.once("exit", (code) => reject(new Error(`kinfer-sim exited ${code}`)));
    createInterface({ input: child.stdout }).on("line", (line) => {
      const m = /^kinfer-sim: \S+ at (\S+)$/.exec(line);
      if (m) resolve(m[1] as string);
    });
  });
  const exited = new Promise<number | null>((r) => child.once("exit", (code) => r(code)));
  const res = await fetch(`${url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: "m", prompt: "hi", max_tokens: 300, ignore_eos: true, stream: true }),
  });
  const reader = (res.body as ReadableStream<Uint8Array>).getReader();
  const decoder = new TextDecoder();
  let received = decoder.decode((await reader.read()).value);
  child.kill("SIGTERM");
  await new Promise((r) => setTimeout(r, 200));
  const during = await fetch(`${url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: "m", prompt: "hi", max_tokens: 4 }),
  }).then(
    (r) => r.status,
    (e: Error) => e.message,
  );
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      received += decoder.decode(value);
    }
  } catch {}
  return { received, during, code: await exited };
}

describe("kinfer-sim command line", () => {
  it("--shutdown-timeout drains on SIGTERM: the running stream finishes, a new request gets 503", async () => {
    const drained = await sigtermMidStream([
      "m",
      "--port",
      "0",
      "--shutdown-timeout",
      "30",
      "--tensor-parallel-size=2",
      "--disable-uvicorn-access-log",
    ]);
    expect(drained.received).toMatch(/data: \[DONE\]/);
    expect(drained.during).toBe(503);
    expect(drained.code).toBe(0);
    // Without it (vLLM before 0.18, or --shutdown-timeout 0), SIGTERM cuts the stream.
    const aborted = await sigtermMidStream(["m", "--port", "0"]);
    expect(aborted.received).not.toMatch(/data: \[DONE\]/);
  });

  it("--help lists every flag with its argument, descriptions in one column", async () => {
    const { code, stdout } = await sim(["--help"]);
    expect(code).toBe(0);
    const flagLines = stdout.split("\n").filter((l) => l.startsWith("  --"));
    expect(flagLines.length).toBeGreaterThan(25);
    const columns = new Set(flagLines.map((l) => /^ {2}\S.*?\s{2,}(?=\S)/.exec(l)?.[0].length));
    expect([...columns]).toEqual([35]);
    for (const flag of ["--port PORT", "--served-model-name NAME", "--max-model-len N", "--max-num-seqs N"])
      expect(stdout).toContain(flag);
    expect(stdout).not.toMatch(/\S{2,}default/); // no description glued to its flag
  });

  it("serves one model under --served-model-name on --port, with vLLM's engine flags", async () => {
    const p = await startSimProcess(
      [
        "meta-llama/Meta-Llama-3-8B-Instruct",
        "--port",
        "0",
        "--served-model-name",
        "llama-3-8b",
        "--max-model-len",
        "2048",
        "--max-num-seqs",
        "4",
      ],
      20_000,
      false,
    );
    try {
      const url = p.urls.get("llama-3-8b")?.[0] as string;
      const models = (await (await fetch(`${url}/v1/models`)).json()) as {
        data: { id: string; max_model_len: number }[];
      };
      expect(models.data.map((m) => [m.id, m.max_model_len])).toEqual([["llama-3-8b", 2048]]);
      const stats = (await (await fetch(`${url}/sim/stats`)).json()) as Record<string, unknown>;
      expect(JSON.stringify(stats)).toBeTruthy();
    } finally {
      await p.stop();
    }
  });

  it("refuses contradictory and malformed flags by name, with status 2", async () => {
    for (const [args, message] of [
      [["--port", "9000", "--replicas", "2"], "--replicas and --base-port are for a fleet"],
      [["--port", "0", "--model", "a", "--model", "b"], "give one --model"],
      [["--max-num-seqs", "lots"], '--max-num-seqs: expected a number, got "lots"'],
      [["--max-num-seqs", "0"], "--max-num-seqs:"],
      [["--unknown-flag"], "--unknown-flag"],
    ] as const) {
      const r = await sim([...args]);
      expect(r.code, args.join(" ")).toBe(2);
      expect(r.stderr).toContain(message);
    }
  });
});
