/**
 * The monitoring rules with Prometheus' own tool (Debian package prometheus): `promtool check rules`
 * validates the PrometheusRule's groups (written out as a plain rule file), `promtool test rules` runs
 * test/deploy/kinfer.rules.test.yaml, where every alert fires on one series and stays quiet on others.
 */
import { execFile } from "node:child_process";
import { copyFileSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, expect, it } from "vitest";
import { root, writeRuleFile } from "../helpers/deploy.js";

const run = promisify(execFile);
const PROMTOOL = process.env.PROMTOOL ?? "promtool";
let dir: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "kinfer-rules-"));
  writeRuleFile(join(dir, "kinfer.rules.yaml"));
  copyFileSync(join(root, "test/deploy/kinfer.rules.test.yaml"), join(dir, "kinfer.rules.test.yaml"));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

it("promtool check rules", async () => {
  const { stdout } = await run(PROMTOOL, ["check", "rules", "kinfer.rules.yaml"], { cwd: dir });
  expect(stdout).toMatch(/SUCCESS: 18 rules found/);
});

it("promtool test rules: every alert fires, and stays quiet where it should", async () => {
  const { stdout } = await run(PROMTOOL, ["test", "rules", "kinfer.rules.test.yaml"], { cwd: dir });
  expect(stdout).toMatch(/SUCCESS/);
});
