/**
 * vitest configuration: every test lives under test/, mirroring the source tree. Two projects:
 * - unit: everything but test/k8s (processes on loopback, no Kubernetes);
 * - k8s: tests against a real control plane (etcd, kube-apiserver, kube-scheduler built from Go modules),
 *   started once by test/k8s/global-setup.ts and shared through `inject`.
 * Benchmarks (test/bench) are programs that print tables, not tests, and are excluded.
 */
import { defineConfig } from "vitest/config";

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
          exclude: ["test/k8s/**", "test/bench/**", "**/node_modules/**"],
        },
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
        },
      },
    ],
  },
});
