/**
 * vitest configuration: every test lives under test/, mirroring the source tree. Benchmarks (test/bench)
 * are programs that print tables, not tests, and are excluded.
 */
import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    exclude: ["test/bench/**", "**/node_modules/**"],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    pool: "forks",
  },
});
