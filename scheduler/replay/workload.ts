/**
 * The pods and node order of one replay seed, built the way the FGD authors' simulator builds them
 * (hkust-adsl/kubernetes-scheduler-simulator: SortClusterPods with shufflePod, TunePodsByNodeTotalResource,
 * syncClusterResourceList), so that a replay and the published runs differ only in their random draws:
 * 1. the trace's pod list is shuffled;
 * 2. tuned to the target demand (e.g. 130% of GPU capacity): pods drawn at random from the list are
 *    appended, after the shuffled list, until the next draw would pass the target; a list already above
 *    the target (multigpu30 to 50) instead loses pods at random until it is at or below it. The stop
 *    test is the simulator's: the drawn pod's share of ONE GPU against the target, so a multi-GPU pod
 *    drawn last can take the total up to 7 GPUs past it (0.1% of openb), and CPU-only pods never stop it;
 * 3. the nodes are put in a random order (the simulator prefixes node names with a random permutation
 *    and breaks score ties by the smallest name): the replay breaks ties by this order.
 * Everything is drawn from the one seeded generator, in this order, so a seed names one workload
 * whatever policy then places it (the paired comparison relies on it).
 */
import type { PodRequest } from "../cluster/pod-request.js";
import { gpuMilliOf } from "../cluster/pod-request.js";

export interface ReplayWorkload {
  /** The pods in arrival order. */
  readonly pods: readonly PodRequest[];
  /** Node indices (into the trace's node list) in tie-break order: the first wins a tie. */
  readonly nodeOrder: readonly number[];
}

/** The share of one GPU the simulator's tuning tests against the target: 1000 for whole GPUs. */
function milliPerGpu(p: PodRequest): number {
  return p.gpus > 0 ? 1000 : p.gpuMilli;
}

function shuffle<T>(list: T[], random: () => number): T[] {
  for (let i = list.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [list[i], list[j]] = [list[j] as T, list[i] as T];
  }
  return list;
}

export function buildWorkload(
  pods: readonly PodRequest[],
  nodeCount: number,
  capacityMilli: number,
  demand: number,
  random: () => number,
): ReplayWorkload {
  const list = shuffle([...pods], random);
  let total = list.reduce((s, p) => s + gpuMilliOf(p), 0);
  const target = (demand / 100) * capacityMilli;
  if (total > target) {
    while (total > target && list.length > 0) {
      const [removed] = list.splice(Math.floor(random() * list.length), 1);
      total -= gpuMilliOf(removed as PodRequest);
    }
  } else if (total < target && pods.length > 0) {
    for (;;) {
      const p = pods[Math.floor(random() * pods.length)] as PodRequest;
      if (total + milliPerGpu(p) > target) break;
      list.push(p);
      total += gpuMilliOf(p);
    }
  }
  const nodeOrder = shuffle(
    Array.from({ length: nodeCount }, (_, i) => i),
    random,
  );
  return { pods: list, nodeOrder };
}
