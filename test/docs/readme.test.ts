/**
 * The README's examples, run as a new user would run them on a fresh clone: `npm start` (the real
 * launcher, as a process), then every example block marked `<!-- readme-test: run -->` in order, shell
 * blocks with bash and TypeScript blocks with tsx (`run, prints "..."` also checks what it prints); blocks
 * marked `background` start a long-running command
 * and wait for the line it prints when ready. Blocks marked `cluster` need a Kubernetes cluster (the
 * cluster tests apply deploy/ instead). Every sh and ts block must carry one of these marks, so that no
 * example goes untested by accident; the first block is the README's two commands. At the end,
 * `npm start` gets Ctrl-C (SIGINT to its process group, as a terminal sends it) and must drain, say so and
 * leave no process behind.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const root = new URL("../..", import.meta.url).pathname;
const readme = readFileSync(join(root, "README.md"), "utf8");

interface Example {
  readonly line: number;
  readonly lang: "sh" | "ts";
  readonly mark: string;
  readonly code: string;
}

/** The README's sh and ts blocks with the mark in the comment line above each. */
function examples(text: string): Example[] {
  const out: Example[] = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const open = /^(\s*)```(sh|ts)\s*$/.exec(lines[i] as string);
    if (open === null) continue;
    const indent = open[1]?.length ?? 0;
    const body: string[] = [];
    let j = i + 1;
    for (; j < lines.length && !/^\s*```\s*$/.test(lines[j] as string); j++)
      body.push((lines[j] as string).slice(indent));
    const mark = /<!-- readme-test: (.*) -->/.exec(lines[i - 1] ?? "")?.[1] ?? "";
    out.push({ line: i + 1, lang: open[2] as "sh" | "ts", mark, code: body.join("\n") });
    i = j;
  }
  return out;
}

/** Runs a command to its end; resolves with its output and exit code. */
function run(command: string, args: string[], timeoutMs: number) {
  return new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    const child = spawn(command, args, { cwd: root, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => {
      stdout += d;
    });
    child.stderr.on("data", (d) => {
      stderr += d;
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** Starts a long-running command in its own process group; resolves once it printed `ready`. */
function startBackground(
  script: string,
  ready: string,
): Promise<{ child: ChildProcess; output: () => string }> {
  return new Promise((resolve, reject) => {
    const child = spawn("bash", ["-c", script], {
      cwd: root,
      stdio: ["ignore", "pipe", "pipe"],
      detached: true,
    });
    let output = "";
    const timer = setTimeout(() => reject(new Error(`not ready within 60 s: ${script}\n${output}`)), 60_000);
    const onData = (d: Buffer) => {
      output += d;
      if (output.includes(ready)) {
        clearTimeout(timer);
        resolve({ child, output: () => output });
      }
    };
    child.stdout?.on("data", onData);
    child.stderr?.on("data", onData);
    child.on("exit", (code) =>
      reject(new Error(`exited (${code}) before it was ready: ${script}\n${output}`)),
    );
  });
}

/** Whether any process of the group is alive. */
function groupAlive(pid: number): boolean {
  try {
    process.kill(-pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** A signal to the process group (SIGINT is a terminal's Ctrl-C); resolves when every process is gone. */
async function stop(child: ChildProcess, signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
  const pid = child.pid as number;
  child.removeAllListeners("exit");
  if (groupAlive(pid)) process.kill(-pid, signal);
  const until = Date.now() + 45_000;
  while (groupAlive(pid) && Date.now() < until) await new Promise((r) => setTimeout(r, 100));
  if (groupAlive(pid)) {
    process.kill(-pid, "SIGKILL");
    throw new Error(`process group ${pid} still running 45 s after ${signal}`);
  }
}

const all = examples(readme);
const background: ChildProcess[] = [];
let platform: { child: ChildProcess; output: () => string };

beforeAll(async () => {
  platform = await startBackground("exec npm start", "kinfer: ready");
}, 120_000);

afterAll(async () => {
  for (const child of background) await stop(child);
});

describe("README", () => {
  it("opens with the two commands: set up and run the platform, run the suite", () => {
    const first = all[0];
    const commands = first?.code
      .split("\n")
      .map((l) => l.replace(/#.*$/, "").trim())
      .filter((l) => l !== "");
    expect(commands).toEqual(["npm ci && npm start", "npm test"]);
  });

  it("marks every other example as run, background or cluster", () => {
    const unmarked = all
      .slice(1)
      .filter((e) => !/^(run(, prints ".+")?|background, ready when it prints ".+"|cluster)$/.test(e.mark));
    expect(unmarked.map((e) => `README.md:${e.line}`)).toEqual([]);
  });

  it("npm start prints one line per component and the commands to try, not JSON logs", () => {
    const out = platform.output();
    for (const component of ["simulated vLLM", "gateway", "admin API", "scheduler", "metrics"])
      expect(out).toMatch(new RegExp(`^  ${component} +\\S`, "m"));
    expect(out).not.toMatch(/^\{"level"/m);
  });

  const runnable = all.filter((e) => e.mark.startsWith("run") || e.mark.startsWith("background"));
  it.each(runnable.map((e) => [`README.md:${e.line} (${e.lang}, ${e.mark.split(",")[0]})`, e] as const))(
    "%s works as written",
    async (_name, example) => {
      if (example.mark.startsWith("background")) {
        const ready = /"(.+)"/.exec(example.mark)?.[1] as string;
        const started = await startBackground(`set -euo pipefail\n${example.code}`, ready);
        background.push(started.child);
        return;
      }
      let result: Awaited<ReturnType<typeof run>>;
      if (example.lang === "sh") {
        result = await run("bash", ["-c", `set -euo pipefail\n${example.code}`], 180_000);
      } else {
        // TypeScript examples import from the repository root ("./gen/..."): point those at it.
        const dir = join(root, "node_modules/.cache/kinfer-readme");
        mkdirSync(dir, { recursive: true });
        const file = join(dir, `example-${example.line}.mts`);
        writeFileSync(file, example.code.replaceAll('from "./', `from "${root}`));
        result = await run(process.execPath, ["--import", "tsx", file], 60_000);
      }
      expect(result.code, `${result.stdout}\n${result.stderr}`).toBe(0);
      expect(result.stdout.trim()).not.toBe("");
      const prints = /prints "(.+)"/.exec(example.mark)?.[1];
      if (prints !== undefined) expect(result.stdout).toContain(prints.replaceAll('\\"', '"'));
    },
    200_000,
  );

  it("npm start stops on Ctrl-C: drains, says so, leaves no process behind", async () => {
    await stop(platform.child, "SIGINT");
    expect(platform.output()).toMatch(/^kinfer: stopped$/m);
  }, 60_000);
});
