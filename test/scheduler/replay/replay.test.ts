/**
 * The trace replay on a slice of openb: identical results for identical seeds, different workloads for
 * different seeds, and the `sched:replay` program's JSON output.
 */
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { readNodes, readPods } from "../../../scheduler/cluster/openb-trace.js";
import { replayOnce } from "../../../scheduler/replay/replay.js";

const data = new URL("../../../data/openb/", import.meta.url).pathname;
const nodes = readNodes(`${data}openb_node_list_gpu_node.csv`).slice(0, 120);
const pods = readPods(`${data}openb_pod_list_default.csv`).slice(0, 800);

describe("replay", () => {
  it.each(["spread", "binpack", "bestfit", "fragmentation"] as const)(
    "%s: identical for identical seeds",
    (policy) => {
      const a = replayOnce(nodes, pods, policy, 42, 130);
      const b = replayOnce(nodes, pods, policy, 42, 130);
      expect([...a.ratio]).toEqual([...b.ratio]);
      expect(a.unallocatedGpus).toBe(b.unallocatedGpus);
      // The ratio never falls (nothing is deleted) and never exceeds 1.
      for (let d = 1; d <= 130; d++) {
        expect(a.ratio[d]).toBeGreaterThanOrEqual(a.ratio[d - 1] as number);
        expect(a.ratio[d]).toBeLessThanOrEqual(1);
      }
      expect(replayOnce(nodes, pods, policy, 43, 130).pods).not.toBe(a.pods);
    },
  );

  it("sched:replay prints one JSON object with the ratio at every 10% and the unallocated GPUs", async () => {
    const { stdout } = await promisify(execFile)(
      process.execPath,
      [
        "--import",
        "tsx",
        "scheduler/replay/main.ts",
        "--nodes",
        `${data}openb_node_list_gpu_node.csv`,
        "--pods",
        `${data}openb_pod_list_gpushare100.csv`,
        "--policy",
        "binpack",
        "--seeds",
        "42-43",
        "--demand",
        "50",
        "--json",
      ],
      { cwd: new URL("../../..", import.meta.url).pathname },
    );
    const result = JSON.parse(stdout);
    expect(Object.keys(result.allocationRatioAtDemand)).toEqual(["10", "20", "30", "40", "50"]);
    expect(result.allocationRatioAtDemand["50"]).toBeGreaterThan(45);
    expect(result.unallocatedGpusAtMaxDemand).toBeGreaterThan(0);
    expect(result.seeds).toEqual([42, 43]);
  });
});
