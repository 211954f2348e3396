/**
 * The tests Stryker runs against each mutant (stryker.config.mjs): the group's tests
 * (test/mutation/modules.json, MUTATION_GROUP), in one flat project, without the ones that take tens of
 * seconds whatever is mutated (the 10,000-input fuzz, the attack and slow-reader suites, the timing
 * project, the cluster tests, the docs and SDK builds). Those still run in `npm test`.
 */
import { readFileSync } from "node:fs";
import { defineConfig } from "vitest/config";

const groups = JSON.parse(readFileSync(new URL("./modules.json", import.meta.url), "utf8"));
const group = groups[process.env.MUTATION_GROUP ?? ""] as { tests: string[] } | undefined;

export default defineConfig({
  test: {
    include: group?.tests ?? ["test/server/**/*.test.ts", "test/scheduler/**/*.test.ts"],
    exclude: [
      "**/node_modules/**",
      "test/integration/fuzz.test.ts",
      "test/integration/attacks.test.ts",
      "test/integration/slow-reader.test.ts",
      "test/integration/gateway-program.test.ts",
      "test/scheduler/program.test.ts",
      "test/scheduler/extender/fuzz.test.ts",
      "test/scheduler/replay/**",
    ],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    pool: "forks",
  },
});
