/**
 * What a pod asks of the scheduler, read from its spec and annotations:
 * - whole GPUs: the nvidia.com/gpu limit (or request) summed over containers;
 * - a GPU share: thousandths of one GPU from the annotation or extended resource kinfer.io/gpu-milli
 *   (1..999, with at most one whole GPU requested);
 * - CPU and memory: the sum of the containers' requests, or the largest init container's if larger
 *   (as kube-scheduler computes it);
 * - accepted GPU models: annotation kinfer.io/gpu-models, comma-separated (empty: any);
 * - policy: annotation kinfer.io/placement-policy.
 * Invalid values throw PodRequestError naming the field.
 */
import type { Pod } from "../../gen/es/kinfer/scheduling/v1/scheduling_pb.js";
import { parseQuantity } from "./quantity.js";

export const GPU_RESOURCE = "nvidia.com/gpu";
export const GPU_MILLI = "kinfer.io/gpu-milli";
export const GPU_MODELS_ANNOTATION = "kinfer.io/gpu-models";
export const POLICY_ANNOTATION = "kinfer.io/placement-policy";
/** Where the scheduler records the devices it gave a pod: "0:1000,1:1000" or "3:250". */
export const DEVICES_ANNOTATION = "kinfer.io/gpu-devices";

export interface PodRequest {
  /** Whole GPUs; 0 for a share or a CPU-only pod. */
  readonly gpus: number;
  /** Thousandths of one GPU for a share; 0 otherwise. */
  readonly gpuMilli: number;
  readonly cpuMilli: number;
  readonly memMiB: number;
  /** Accepted GPU models; empty accepts any. */
  readonly models: readonly string[];
  /** Policy named by the pod; "" for the default. */
  readonly policy: string;
}

/** Floating-point error tolerated when rounding CPU and memory up to whole millicores and MiB. */
const ROUNDING_SLACK = 1e-6;

export class PodRequestError extends Error {
  override readonly name = "PodRequestError";
}

/** GPU thousandths the request takes in total. */
export function gpuMilliOf(r: PodRequest): number {
  return r.gpus * 1000 + r.gpuMilli;
}

export function readPodRequest(pod: Pod): PodRequest {
  const containers = pod.spec?.containers ?? [];
  const inits = pod.spec?.initContainers ?? [];
  const annotations = pod.metadata?.annotations ?? {};
  const quantity = (where: string, value: string) => {
    try {
      return parseQuantity(value);
    } catch {
      throw new PodRequestError(`${where}: "${value}" is not a quantity`);
    }
  };
  const sum = (list: typeof containers, resource: string, limitsToo: boolean) => {
    let total = 0;
    for (const [i, c] of list.entries()) {
      const v = c.resources?.requests[resource] ?? (limitsToo ? c.resources?.limits[resource] : undefined);
      if (v !== undefined) total += quantity(`containers[${i}].resources ${resource}`, v);
    }
    return total;
  };
  const maxOf = (list: typeof containers, resource: string, limitsToo: boolean) =>
    Math.max(
      0,
      ...list.map((c, i) => {
        const v = c.resources?.requests[resource] ?? (limitsToo ? c.resources?.limits[resource] : undefined);
        return v === undefined ? 0 : quantity(`initContainers[${i}].resources ${resource}`, v);
      }),
    );

  const gpus = Math.max(sum(containers, GPU_RESOURCE, true), maxOf(inits, GPU_RESOURCE, true));
  if (!Number.isInteger(gpus) || gpus < 0 || gpus > 64)
    throw new PodRequestError(`${GPU_RESOURCE} must be a whole number of GPUs`);
  const milliText = annotations[GPU_MILLI];
  let gpuMilli =
    milliText !== undefined
      ? quantity(`annotation ${GPU_MILLI}`, milliText)
      : sum(containers, GPU_MILLI, true);
  if (!Number.isInteger(gpuMilli) || gpuMilli < 0 || gpuMilli > 1000) {
    throw new PodRequestError(`${GPU_MILLI} must be an integer from 1 to 1000`);
  }
  let wholeGpus = gpus;
  if (gpuMilli === 1000) {
    wholeGpus = Math.max(wholeGpus, 1);
    gpuMilli = 0;
  } else if (gpuMilli > 0) {
    if (gpus > 1)
      throw new PodRequestError(`a GPU share (${GPU_MILLI}) cannot be combined with ${gpus} whole GPUs`);
    wholeGpus = 0;
  }
  // Rounded up as Kubernetes rounds quantities, less a hair for binary floating point: "9m" is 0.009
  // cores, and 0.009 * 1000 is 9.000000000000002, which must stay 9 millicores.
  const cpuMilli = Math.ceil(
    Math.max(sum(containers, "cpu", false), maxOf(inits, "cpu", false)) * 1000 - ROUNDING_SLACK,
  );
  const memMiB = Math.ceil(
    Math.max(sum(containers, "memory", false), maxOf(inits, "memory", false)) / 2 ** 20 - ROUNDING_SLACK,
  );
  const models = (annotations[GPU_MODELS_ANNOTATION] ?? "")
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "");
  return {
    gpus: wholeGpus,
    gpuMilli,
    cpuMilli,
    memMiB,
    models,
    policy: annotations[POLICY_ANNOTATION] ?? "",
  };
}

/** Parses the devices annotation ("0:1000,3:250"); throws PodRequestError if malformed. */
export function parseDevices(text: string): { index: number; milli: number }[] {
  return text.split(",").map((part) => {
    const m = /^(\d{1,2}):(\d{1,4})$/.exec(part.trim());
    if (m === null) throw new PodRequestError(`${DEVICES_ANNOTATION}: malformed "${part}"`);
    const milli = Number(m[2]);
    if (milli < 1 || milli > 1000)
      throw new PodRequestError(`${DEVICES_ANNOTATION}: share out of range in "${part}"`);
    return { index: Number(m[1]), milli };
  });
}

export function formatDevices(devices: readonly { index: number; milli: number }[]): string {
  return devices.map((d) => `${d.index}:${d.milli}`).join(",");
}
