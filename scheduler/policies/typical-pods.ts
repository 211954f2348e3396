/**
 * FGD's typical pods: the pod shapes of a workload, most common first, kept until they cover a share of
 * its pods (95% in the published runs), with their frequencies renormalised over the shapes kept. This
 * follows the FGD authors' simulator (hkust-adsl/kubernetes-scheduler-simulator, GetTypicalPods with
 * isInvolvedCpuPods, podPopularityThreshold 95, podIncreaseStep 1, gpuResWeight 0):
 * - a shape is what the simulator keys on: CPU, the share of each GPU (1000 for whole GPUs), the GPU
 *   count and the accepted GPU models as the trace writes them; memory is not part of it;
 * - CPU-only pods are shapes too;
 * - among equally common shapes the larger (CPU, then share, count, models) comes first, as the
 *   simulator's reversed sort orders them, so the cut at the coverage falls where it falls there.
 * It only counts; fgd-reference-policy.ts scores with the result.
 */
import type { PodRequest } from "../cluster/pod-request.js";

export interface TypicalPod {
  readonly cpuMilli: number;
  /** Thousandths of each GPU: 1000 for whole GPUs, less for a share, 0 for a CPU-only pod. */
  readonly milliPerGpu: number;
  /** GPUs: 0 for a CPU-only pod, 1 for a share. */
  readonly gpuCount: number;
  /** Accepted GPU models joined with "|" as in the trace; "" accepts any. */
  readonly models: string;
  /** Frequency among the shapes kept (they sum to 1). */
  readonly weight: number;
}

/** The FGD shape of a pod request (kinfer keeps whole GPUs and shares in separate fields). */
export function shapeOf(req: PodRequest): Omit<TypicalPod, "weight"> {
  const [gpuCount, milliPerGpu] =
    req.gpus > 0 ? [req.gpus, 1000] : req.gpuMilli > 0 ? [1, req.gpuMilli] : [0, 0];
  return { cpuMilli: req.cpuMilli, milliPerGpu, gpuCount, models: req.models.join("|") };
}

/** The simulator's order of two shapes (PodResource.Less): CPU, then share, count, models. */
function shapeLess(a: Omit<TypicalPod, "weight">, b: Omit<TypicalPod, "weight">): boolean {
  if (a.cpuMilli !== b.cpuMilli) return a.cpuMilli < b.cpuMilli;
  if (a.milliPerGpu !== b.milliPerGpu) return a.milliPerGpu < b.milliPerGpu;
  if (a.gpuCount !== b.gpuCount) return a.gpuCount < b.gpuCount;
  return a.models < b.models;
}

/**
 * The typical pods of `pods` (or of counted shapes): the most common shapes until they cover at least
 * `coverage` of the pods. Empty for no pods.
 */
export function typicalPods(pods: Iterable<PodRequest>, coverage = 0.95): TypicalPod[] {
  const counts = new Map<string, { shape: Omit<TypicalPod, "weight">; count: number }>();
  for (const req of pods) {
    const shape = shapeOf(req);
    const key = `${shape.cpuMilli}/${shape.milliPerGpu}/${shape.gpuCount}/${shape.models}`;
    const entry = counts.get(key);
    if (entry) entry.count++;
    else counts.set(key, { shape, count: 1 });
  }
  return typicalFromCounts(counts.values(), coverage);
}

/** The same selection from shapes already counted. */
export function typicalFromCounts(
  counted: Iterable<{ shape: Omit<TypicalPod, "weight">; count: number }>,
  coverage = 0.95,
): TypicalPod[] {
  const sorted = [...counted].sort((a, b) =>
    a.count !== b.count
      ? b.count - a.count
      : shapeLess(a.shape, b.shape)
        ? 1
        : shapeLess(b.shape, a.shape)
          ? -1
          : 0,
  );
  const total = sorted.reduce((s, e) => s + e.count, 0);
  const kept: typeof sorted = [];
  let covered = 0;
  for (const entry of sorted) {
    if (covered >= coverage * total) break;
    kept.push(entry);
    covered += entry.count;
  }
  return kept.map(({ shape, count }) => ({ ...shape, weight: count / covered }));
}

/**
 * Whether a node of GPU model `model` can run a shape that accepts `models` (the simulator's
 * IsNodeAccessibleToPodByType): any model when the shape names none, never on a node of unknown model
 * otherwise.
 */
export function acceptsModel(models: string, model: string): boolean {
  if (models === "") return true;
  if (model === "") return false;
  const named = models.split("|").filter((m) => m !== "");
  return named.length === 0 || named.includes(model);
}
