/**
 * The FGD comparison (issue 24), over every openb trace in data/openb, through the replay
 * (scheduler/replay):
 * - `--mode calibration`: fgd-reference, kinfer's reproduction of the FGD simulator, against the FGD
 *   authors' published per-seed results (data/openb/fgd_published_alloc_130.csv, seeds 42-51): mean
 *   allocation at the top demand, the published mean, their difference and its standard error (the two
 *   runs draw different random workloads, so the comparison is unpaired);
 * - `--mode paired`: `--policy` (default fragmentation) minus `--against` (default fgd-reference) on
 *   identical pod sequences and node orders, per seed: mean difference, 95% confidence interval, wins.
 * `--tune key=value,...` passes options to the fragmentation policy (for tuning runs; BENCHMARKS.md says
 * which seeds and traces each default was chosen on). Prints a Markdown table; progress on stderr.
 *
 *   node --import tsx bench/scheduler-fgd.ts --mode paired --seeds 42-51 [--traces default,multigpu50]
 *     [--demand 130] [--tune packingWeight=0.03]
 */
import { readdirSync, readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { readNodes, readPods } from "../scheduler/cluster/openb-trace.js";
import type { PodRequest } from "../scheduler/cluster/pod-request.js";
import {
  createFragmentationPolicy,
  type FragmentationOptions,
} from "../scheduler/policies/fragmentation-policy.js";
import { POLICY_NAMES, type PolicyName } from "../scheduler/policies/placement-policy.js";
import { parseSeeds } from "../scheduler/replay/main.js";
import { pairedDifference } from "../scheduler/replay/paired-stats.js";
import { type ReplayPolicy, replayOnce } from "../scheduler/replay/replay.js";

const DATA = new URL("../data/openb/", import.meta.url).pathname;
const PUBLISHED = `${DATA}fgd_published_alloc_130.csv`;

const { values } = parseArgs({
  options: {
    mode: { type: "string", default: "paired" },
    seeds: { type: "string", default: "42-51" },
    traces: { type: "string" },
    demand: { type: "string", default: "130" },
    policy: { type: "string", default: "fragmentation" },
    against: { type: "string", default: "fgd-reference" },
    tune: { type: "string", default: "" },
  },
});
const seeds = parseSeeds(values.seeds);
const demand = Number(values.demand);
const traces =
  values.traces?.split(",") ??
  readdirSync(DATA)
    .filter((f) => /^openb_pod_list_.*\.csv$/.test(f))
    .map((f) => f.slice("openb_pod_list_".length, -".csv".length))
    .sort((a, b) => a.localeCompare(b, "en", { numeric: true }));
const nodes = readNodes(`${DATA}openb_node_list_gpu_node.csv`);

function tuned(): FragmentationOptions {
  const options: Record<string, number> = {};
  for (const pair of values.tune.split(",").filter((p) => p !== "")) {
    const [key, value] = pair.split("=");
    if (key === undefined || value === undefined || !Number.isFinite(Number(value)))
      throw new Error(`--tune: "${pair}" is not key=number`);
    options[key] = Number(value);
  }
  return options as FragmentationOptions;
}

function policyOf(name: string): ReplayPolicy {
  if (name === "fragmentation" && values.tune !== "") {
    const options = tuned();
    return () => createFragmentationPolicy(options);
  }
  if (name !== "random" && !(POLICY_NAMES as readonly string[]).includes(name))
    throw new Error(`unknown policy ${name}`);
  return name as PolicyName | "random";
}

function run(policy: ReplayPolicy, pods: readonly PodRequest[], trace: string): number[] {
  return seeds.map((seed) => {
    const value = replayOnce(nodes, pods, policy, seed, demand).allocation[demand] as number;
    process.stderr.write(`${trace} seed ${seed}: ${value}\n`);
    return value;
  });
}

const mean = (xs: readonly number[]) => xs.reduce((s, x) => s + x, 0) / xs.length;
const sd = (xs: readonly number[]) => {
  const m = mean(xs);
  return Math.sqrt(xs.reduce((s, x) => s + (x - m) ** 2, 0) / (xs.length - 1));
};
const f2 = (x: number) => x.toFixed(2);
const f3 = (x: number) => (x >= 0 ? "+" : "") + x.toFixed(3);

if (values.mode === "calibration") {
  const published = new Map<string, number[]>();
  for (const line of readFileSync(PUBLISHED, "utf8").trim().split("\n").slice(1)) {
    const [trace, , value] = line.split(",");
    published.set(trace as string, [...(published.get(trace as string) ?? []), Number(value)]);
  }
  console.log(
    `fgd-reference (kinfer) against FGD published, allocation at ${demand}%, seeds ${values.seeds}`,
  );
  console.log(
    "| trace | fgd-reference mean (sd) | FGD published mean (sd) | difference | SE of difference |",
  );
  console.log("|---|---:|---:|---:|---:|");
  for (const trace of traces) {
    const ours = run("fgd-reference", readPods(`${DATA}openb_pod_list_${trace}.csv`), trace);
    const theirs = published.get(trace);
    const cells = theirs
      ? [
          `${f2(mean(theirs))} (${f2(sd(theirs))})`,
          f3(mean(ours) - mean(theirs)),
          Math.sqrt(sd(ours) ** 2 / ours.length + sd(theirs) ** 2 / theirs.length).toFixed(3),
        ]
      : ["not published", "-", "-"];
    console.log(`| ${trace} | ${f2(mean(ours))} (${f2(sd(ours))}) | ${cells.join(" | ")} |`);
  }
} else if (values.mode === "paired") {
  const label = values.tune === "" ? values.policy : `${values.policy} (${values.tune})`;
  console.log(`${label} minus ${values.against}, allocation at ${demand}%, seeds ${values.seeds}, paired`);
  console.log(`| trace | ${values.policy} | ${values.against} | mean difference | 95% CI | wins / seeds |`);
  console.log("|---|---:|---:|---:|---|---:|");
  const all: number[] = [];
  for (const trace of traces) {
    const pods = readPods(`${DATA}openb_pod_list_${trace}.csv`);
    const a = run(policyOf(values.policy), pods, trace);
    const b = run(policyOf(values.against), pods, trace);
    const d = pairedDifference(a, b);
    all.push(d.mean);
    const wins = a.filter((x, i) => x > (b[i] as number)).length;
    console.log(
      `| ${trace} | ${f2(mean(a))} | ${f2(mean(b))} | ${f3(d.mean)} | [${f3(d.low)}, ${f3(d.high)}] | ${wins} / ${a.length} |`,
    );
  }
  console.log(`mean of the per-trace differences: ${f3(mean(all))}`);
} else throw new Error("--mode: calibration or paired");
