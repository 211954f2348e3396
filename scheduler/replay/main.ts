/**
 * sched:replay: reproduces the FGD paper's experiment on an openb trace with any policy, one seed after
 * another, and optionally compares two policies on identical pod sequences.
 *
 *   npm run sched:replay -- --nodes <node csv> --pods <pod csv> --policy fragmentation \
 *     [--against fgd-reference] --seeds 42-51 --demand 130 [--json]
 *
 * Prints each seed's allocation ratio at 100% and at the top demand, its unallocated GPUs and failed
 * pods, then the means at every 10% of arrived demand (replay.ts says how they are computed). With
 * `--against B`, every seed is also run with policy B on the same workload and node order, and the
 * mean difference (policy minus B) at the top demand is printed with its 95% confidence interval.
 * `--seeds` takes numbers and ranges, comma-separated ("1-30", "1-20,42-51"). `--json` prints one object
 * instead. Progress goes to stderr. `--policy random` is the paper's Random baseline.
 */
import { parseArgs } from "node:util";
import { isEntryPoint, runProgram } from "../../common/process/program.js";
import { readNodes, readPods } from "../cluster/openb-trace.js";
import { POLICY_NAMES } from "../policies/placement-policy.js";
import { type PairedDifference, pairedDifference } from "./paired-stats.js";
import { type ReplayPolicy, type ReplayRun, replayOnce } from "./replay.js";

/** Most seeds one command runs. */
const MAX_SEEDS = 10_000;

export function parseSeeds(text: string): number[] {
  const seeds: number[] = [];
  for (const part of text.split(",")) {
    const range = /^\s*(\d+)\s*-\s*(\d+)\s*$/.exec(part);
    if (range) {
      const [a, b] = [Number(range[1]), Number(range[2])];
      if (b < a) throw new Error(`--seeds: empty range "${part}"`);
      for (let s = a; s <= b && seeds.length <= MAX_SEEDS; s++) seeds.push(s);
    } else if (/^\s*\d+\s*$/.test(part)) seeds.push(Number(part));
    else throw new Error(`--seeds: "${part}" is neither a number nor a range like 1-30`);
  }
  if (seeds.length > MAX_SEEDS) throw new Error(`--seeds: at most ${MAX_SEEDS} seeds`);
  if (new Set(seeds).size !== seeds.length) throw new Error("--seeds: a seed is named twice");
  return seeds;
}

function policyArg(name: string, flag: string): Exclude<ReplayPolicy, (...args: never[]) => unknown> {
  if (name !== "random" && !(POLICY_NAMES as readonly string[]).includes(name))
    throw new Error(`${flag}: one of ${[...POLICY_NAMES, "random"].join(", ")}`);
  return name as Exclude<ReplayPolicy, (...args: never[]) => unknown>;
}

const fixed2 = (x: number) => Number(x.toFixed(2));

export function main(argv: string[]): void {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      nodes: { type: "string" },
      pods: { type: "string" },
      policy: { type: "string", default: "fragmentation" },
      against: { type: "string" },
      seeds: { type: "string", default: "42-51" },
      demand: { type: "string", default: "130" },
      json: { type: "boolean", default: false },
    },
  });
  if (values.nodes === undefined || values.pods === undefined)
    throw new Error("--nodes and --pods are required");
  const policy = policyArg(values.policy, "--policy");
  const against = values.against === undefined ? undefined : policyArg(values.against, "--against");
  const demand = Number(values.demand);
  if (!Number.isInteger(demand) || demand < 10 || demand > 1000)
    throw new Error("--demand: a percentage from 10 to 1000");
  const seeds = parseSeeds(values.seeds);
  if (against !== undefined && seeds.length < 2) throw new Error("--against needs at least two seeds");
  const nodes = readNodes(values.nodes);
  const pods = readPods(values.pods);

  const runs: ReplayRun[] = [];
  const others: ReplayRun[] = [];
  const perSeed = seeds.map((seed) => {
    const started = performance.now();
    const run = replayOnce(nodes, pods, policy, seed, demand);
    runs.push(run);
    const other = against === undefined ? undefined : replayOnce(nodes, pods, against, seed, demand);
    if (other) others.push(other);
    process.stderr.write(`seed ${seed}: ${((performance.now() - started) / 1000).toFixed(1)} s\n`);
    const top = run.allocation[demand] as number;
    return {
      seed,
      allocationAt100: demand >= 100 ? (run.allocation[100] as number) : null,
      allocationAtDemand: top,
      unallocatedGpus: Number(run.unallocatedGpus.toFixed(1)),
      failedPods: run.failed,
      ...(other
        ? {
            against: other.allocation[demand] as number,
            difference: fixed2(top - (other.allocation[demand] as number)),
          }
        : {}),
    };
  });
  const mean = (list: ReplayRun[], f: (r: ReplayRun) => number) =>
    list.reduce((s, r) => s + f(r), 0) / list.length;
  const at: Record<string, number> = {};
  for (let d = 10; d <= demand; d += 10) at[String(d)] = fixed2(mean(runs, (r) => r.allocation[d] as number));
  let paired: PairedDifference | undefined;
  if (against !== undefined)
    paired = pairedDifference(
      runs.map((r) => r.allocation[demand] as number),
      others.map((r) => r.allocation[demand] as number),
    );
  const result = {
    nodes: values.nodes,
    pods: values.pods,
    policy,
    seeds,
    demand,
    perSeed,
    allocationRatioAtDemand: at,
    unallocatedGpusAtMaxDemand: Number(mean(runs, (r) => r.unallocatedGpus).toFixed(1)),
    failedPods: Number(mean(runs, (r) => r.failed).toFixed(1)),
    ...(paired && against
      ? {
          paired: {
            against,
            againstMean: fixed2(mean(others, (r) => r.allocation[demand] as number)),
            meanDifference: Number(paired.mean.toFixed(3)),
            ci95: [Number(paired.low.toFixed(3)), Number(paired.high.toFixed(3))],
            sd: Number(paired.sd.toFixed(3)),
          },
        }
      : {}),
  };
  if (values.json) {
    console.log(JSON.stringify(result));
    return;
  }
  console.log(
    `policy ${policy}, ${seeds.length} seeds, ${nodes.length} nodes, ${pods.length} pods in the list`,
  );
  for (const s of perSeed) {
    const vs =
      s.against === undefined
        ? ""
        : `, ${against} ${s.against.toFixed(2)}% (difference ${s.difference?.toFixed(2)})`;
    console.log(
      `  seed ${s.seed}: ${s.allocationAtDemand.toFixed(2)}% at ${demand}%${vs}, ${s.unallocatedGpus} GPUs unallocated, ${s.failedPods} pods failed`,
    );
  }
  console.log("arrived demand (% of GPU capacity) -> GPU allocation ratio (%), mean over the seeds");
  for (const [d, v] of Object.entries(at)) console.log(`  ${d.padStart(4)}%  ${v.toFixed(2)}%`);
  console.log(`unallocated GPUs at ${demand}%: ${result.unallocatedGpusAtMaxDemand}`);
  if (paired && against)
    console.log(
      `${policy} minus ${against} at ${demand}%: ${paired.mean.toFixed(3)} points, 95% CI [${paired.low.toFixed(3)}, ${paired.high.toFixed(3)}] (${paired.n} paired seeds)`,
    );
}

if (isEntryPoint(import.meta.url)) runProgram("sched:replay", () => main(process.argv.slice(2)));
