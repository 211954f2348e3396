/**
 * Reads the scheduler's view of Kubernetes objects (the scheduling proto's Node and Pod subsets, which
 * are also what the informers produce): node capacity and readiness, and which pods hold resources.
 */
import type { Node, Pod } from "../../gen/es/kinfer/scheduling/v1/scheduling_pb.js";
import type { NodeInfo, PlacedPod } from "./cluster-state.js";
import { GPU_PRODUCT_LABEL, NVLINK_DOMAIN_LABEL } from "./gpu-node.js";
import { DEVICES_ANNOTATION, GPU_RESOURCE, parseDevices, readPodRequest } from "./pod-request.js";
import { parseQuantity } from "./quantity.js";

function quantityOr(value: string | undefined, scale: number, fallback = 0): number {
  if (value === undefined) return fallback;
  try {
    return Math.floor(parseQuantity(value) * scale);
  } catch {
    return fallback;
  }
}

export function nodeInfoOf(node: Node): NodeInfo {
  const allocatable = node.status?.allocatable ?? {};
  const labels = node.metadata?.labels ?? {};
  const ready = node.status?.conditions.find((c) => c.type === "Ready")?.status === "True";
  const domain = Number(labels[NVLINK_DOMAIN_LABEL] ?? 0);
  return {
    name: node.metadata?.name ?? "",
    model: labels[GPU_PRODUCT_LABEL] ?? "",
    cpuMilli: quantityOr(allocatable.cpu, 1000),
    memMiB: quantityOr(allocatable.memory, 1 / 2 ** 20),
    gpus: Math.min(64, quantityOr(allocatable[GPU_RESOURCE], 1)),
    nvlinkDomainSize: Number.isInteger(domain) && domain > 0 ? domain : 0,
    schedulable: ready && !(node.spec?.unschedulable ?? false),
  };
}

/** Whether a pod holds resources: bound to a node and not finished. */
export function holdsResources(pod: Pod): boolean {
  const phase = pod.status?.phase ?? "";
  return (pod.spec?.nodeName ?? "") !== "" && phase !== "Succeeded" && phase !== "Failed";
}

/** The placement of a pod that holds resources; undefined if it does not (or its request is invalid). */
export function placedPodOf(pod: Pod): PlacedPod | undefined {
  if (!holdsResources(pod)) return undefined;
  let request: ReturnType<typeof readPodRequest>;
  try {
    request = readPodRequest(pod);
  } catch {
    return undefined;
  }
  const text = pod.metadata?.annotations[DEVICES_ANNOTATION];
  let devices: PlacedPod["devices"];
  try {
    devices = text === undefined ? undefined : parseDevices(text);
  } catch {
    devices = undefined; // re-derived by first fit
  }
  return {
    uid: pod.metadata?.uid ?? "",
    key: `${pod.metadata?.namespace ?? ""}/${pod.metadata?.name ?? ""}`,
    node: pod.spec?.nodeName ?? "",
    request,
    devices,
  };
}
