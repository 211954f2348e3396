/**
 * The monitoring rules with Prometheus' own tool (Debian package prometheus): `promtool check rules`
 * validates them, `promtool test rules` runs test/deploy/kinfer.rules.test.yaml, where every alert fires on
 * one series and stays quiet on others.
 */
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { expect, it } from "vitest";

const run = promisify(execFile);
const root = new URL("../..", import.meta.url).pathname;
const PROMTOOL = process.env.PROMTOOL ?? "promtool";

it("promtool check rules", async () => {
  const { stdout } = await run(PROMTOOL, ["check", "rules", "deploy/monitoring/kinfer.rules.yaml"], {
    cwd: root,
  });
  expect(stdout).toMatch(/SUCCESS: 12 rules found/);
});

it("promtool test rules: every alert fires, and stays quiet where it should", async () => {
  const { stdout } = await run(PROMTOOL, ["test", "rules", "test/deploy/kinfer.rules.test.yaml"], {
    cwd: root,
  });
  expect(stdout).toMatch(/SUCCESS/);
});

it("the PromQL uses vLLM's real (colon) metric names", async () => {
  const { readFile } = await import("node:fs/promises");
  const rules = await readFile(`${root}deploy/monitoring/kinfer.rules.yaml`, "utf8");
  // The underscore forms exist only after a prometheus-adapter rename; recorded series (level:metric:op)
  // may use them inside their own names.
  expect(rules).not.toMatch(/(^|[^:\w])vllm_(num_requests|kv_cache|gpu_cache)/m);
  expect(rules).toMatch(/vllm:num_requests_waiting/);
});
