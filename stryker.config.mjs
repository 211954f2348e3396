/**
 * Mutation testing (Stryker, `npm run test:mutation -- [group]`, test/mutation/run.sh): how much of what
 * the tests claim to check they would notice broken. Not part of `npm test`: on two cores a group takes
 * minutes to an hour. The groups (the modules that hold the platform's promises) are in
 * test/mutation/modules.json; MUTATION_GROUP picks one. Scores and the surviving mutants that matter are
 * reported in TESTING.md.
 */
import { readFileSync } from "node:fs";

const groups = JSON.parse(readFileSync(new URL("./test/mutation/modules.json", import.meta.url), "utf8"));
const group = process.env.MUTATION_GROUP ?? "routing";
if (groups[group]?.mutate === undefined)
  throw new Error(`unknown mutation group ${group}: ${Object.keys(groups).join(", ")}`);

export default {
  testRunner: "vitest",
  vitest: { configFile: "test/mutation/vitest.config.ts" },
  plugins: ["@stryker-mutator/vitest-runner"],
  mutate: groups[group].mutate,
  coverageAnalysis: "perTest",
  concurrency: 2,
  timeoutMS: 20_000,
  timeoutFactor: 2,
  reporters: ["clear-text", "json", "html", "progress"],
  jsonReporter: { fileName: `reports/mutation/${group}.json` },
  htmlReporter: { fileName: `reports/mutation/${group}.html` },
  tempDirName: ".stryker-tmp",
  cleanTempDir: "always",
  thresholds: { high: 90, low: 80, break: null },
};
