/**
 * vitest configuration: every test lives under test/, mirroring the source tree. Three projects, run one
 * after another (sequence.groupOrder):
 * - unit: everything on loopback that does not measure time, in parallel;
 * - timing: tests that compare measured latencies with a model (the simulator's load sweep, real vs
 *   virtual time), alone, so that other test files do not steal their CPU;
 * - k8s: tests against a real control plane (etcd, kube-apiserver, kube-scheduler built from Go modules),
 *   started once by test/k8s/global-setup.ts and shared through `inject`.
 * Benchmarks live in bench/ (programs that print tables, not tests).
 */
import { defineConfig } from "vitest/config";

const TIMING = ["test/sim/load.test.ts", "test/sim/engine/clock-agreement.test.ts"];

export default defineConfig({
  test: {
    testTimeout: 30_000,
    hookTimeout: 120_000,
    pool: "forks",
    projects: [
      {
        extends: true,
        test: {
          name: "unit",
          include: ["test/**/*.test.ts"],
          exclude: ["test/k8s/**", "**/node_modules/**", ...TIMING],
          sequence: { groupOrder: 0 },
        },
      },
      {
        extends: true,
        test: { name: "timing", include: TIMING, fileParallelism: false, sequence: { groupOrder: 1 } },
      },
      {
        extends: true,
        test: {
          name: "k8s",
          include: ["test/k8s/**/*.test.ts"],
          globalSetup: ["test/k8s/global-setup.ts"],
          // One control plane is shared: run these files one at a time.
          fileParallelism: false,
          testTimeout: 120_000,
          sequence: { groupOrder: 2 },
        },
      },
    ],
  },
});
