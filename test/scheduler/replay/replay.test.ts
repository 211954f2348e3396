/**
 * The trace replay on slices of openb: identical results for identical seeds, one workload per seed
 * whatever the policy (what the paired comparison relies on), the FGD simulator's tuning to the target
 * demand in both directions, and the `sched:replay` program's per-seed, paired and JSON output.
 */
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { createRng } from "../../../common/random.js";
import { readNodes, readPods } from "../../../scheduler/cluster/openb-trace.js";
import { gpuMilliOf, type PodRequest } from "../../../scheduler/cluster/pod-request.js";
import { parseSeeds } from "../../../scheduler/replay/main.js";
import { replayOnce } from "../../../scheduler/replay/replay.js";
import { buildWorkload } from "../../../scheduler/replay/workload.js";

const data = new URL("../../../data/openb/", import.meta.url).pathname;
const nodes = readNodes(`${data}openb_node_list_gpu_node.csv`).slice(0, 120);
const pods = readPods(`${data}openb_pod_list_default.csv`).slice(0, 800);
const capacity = nodes.reduce((s, n) => s + n.gpus * 1000, 0);
const demandOf = (list: readonly PodRequest[]) => list.reduce((s, p) => s + gpuMilliOf(p), 0);

describe("replay", () => {
  it.each(["spread", "binpack", "bestfit", "fragmentation", "fgd-reference", "random"] as const)(
    "%s: identical for identical seeds, different for different seeds",
    (policy) => {
      const a = replayOnce(nodes, pods, policy, 42, 130);
      const b = replayOnce(nodes, pods, policy, 42, 130);
      expect([...a.allocation]).toEqual([...b.allocation]);
      expect(a.unallocatedGpus).toBe(b.unallocatedGpus);
      // Nothing is deleted: the ratio at a level never falls below the level before by more than the
      // rounding of averaged events, and never exceeds the demand that arrived or 100%.
      for (let d = 1; d <= 130; d++) {
        expect(a.allocation[d]).toBeGreaterThanOrEqual((a.allocation[d - 1] as number) - 0.01);
        expect(a.allocation[d]).toBeLessThanOrEqual(Math.min(100, d + 1));
      }
      expect(replayOnce(nodes, pods, policy, 43, 130).pods).not.toBe(a.pods);
    },
  );

  it("one seed, one workload: every policy sees the same pods (the count and the arrived demand)", () => {
    const runs = (["binpack", "fragmentation", "fgd-reference", "random"] as const).map((p) =>
      replayOnce(nodes, pods, p, 7, 130),
    );
    for (const r of runs) {
      expect(r.pods).toBe(runs[0]?.pods);
      expect(r.arrivedPercent).toBe(runs[0]?.arrivedPercent);
    }
  });

  it("tunes up to the target: the whole list first, then draws until the next would pass it", () => {
    const list = pods.slice(0, 300);
    const w = buildWorkload(list, nodes.length, capacity, 130, createRng(1));
    const target = 1.3 * capacity;
    expect(demandOf(list)).toBeLessThan(target);
    // The shuffled list comes first, whole; the draws after it.
    expect(new Set(w.pods.slice(0, list.length))).toEqual(new Set(list));
    const total = demandOf(w.pods);
    expect(total).toBeGreaterThan(target - 1000); // stopped by a draw whose one-GPU share would pass it
    expect(total).toBeLessThanOrEqual(target + 7000); // FGD's test allows a last multi-GPU pod past it
    expect(w.nodeOrder).toHaveLength(nodes.length);
    expect(new Set(w.nodeOrder).size).toBe(nodes.length);
  });

  it("tunes down a list above the target by dropping random pods until it is at or below it", () => {
    const w = buildWorkload(pods, 10, 100_000, 130, createRng(1));
    expect(demandOf(pods)).toBeGreaterThan(130_000);
    expect(demandOf(w.pods)).toBeLessThanOrEqual(130_000);
    expect(demandOf(w.pods)).toBeGreaterThan(130_000 - 8000);
    // Only pods of the list, none twice.
    expect(w.pods.length).toBeLessThan(pods.length);
    expect(new Set(w.pods).size).toBe(w.pods.length);
  });

  it("reads the unallocated GPUs at the top demand, not at the end of an over-full list", () => {
    // multigpu50's list asks for 183% of the GPUs; the replay stops at 130%.
    const heavy = readPods(`${data}openb_pod_list_multigpu50.csv`).slice(0, 1500);
    const run = replayOnce(nodes, heavy, "binpack", 3, 130);
    expect(run.arrivedPercent).toBeLessThanOrEqual(130);
    expect(run.unallocatedGpus).toBeCloseTo(
      (capacity / 1000) * (1 - (run.allocation[130] as number) / 100),
      6,
    );
  });

  it("--seeds takes ranges of 30 or more and lists of ranges", () => {
    expect(parseSeeds("1-30")).toHaveLength(30);
    expect(parseSeeds("1-20,42-51")).toEqual([
      ...Array.from({ length: 20 }, (_, i) => i + 1),
      42,
      43,
      44,
      45,
      46,
      47,
      48,
      49,
      50,
      51,
    ]);
    expect(parseSeeds("1-100")).toHaveLength(100);
    expect(() => parseSeeds("5-1")).toThrow(/empty range/);
    expect(() => parseSeeds("1-3,2")).toThrow(/twice/);
  });

  it("sched:replay prints per-seed results and, with --against, the paired difference with its CI", async () => {
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
        "--against",
        "spread",
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
    expect(result.perSeed.map((s: { seed: number }) => s.seed)).toEqual([42, 43]);
    const [low, high] = result.paired.ci95;
    expect(low).toBeLessThanOrEqual(result.paired.meanDifference);
    expect(high).toBeGreaterThanOrEqual(result.paired.meanDifference);
    const diffs = result.perSeed.map((s: { difference: number }) => s.difference);
    expect(result.paired.meanDifference).toBeCloseTo((diffs[0] + diffs[1]) / 2, 2);
  });
});
