/**
 * The three classic policies.
 * - spread: the seed article's scheduler: score = 100 - GPU utilisation in whole percent, so nodes within
 *   the same percent tie and kube-scheduler picks among them at random; the emptiest GPU for a share.
 *   It keeps load even and fragments GPUs.
 * - binpack: the most utilised node after placement, the tightest GPU: fills nodes one by one.
 * - bestfit: the node left with the least free resources after placement (GPU, then CPU and memory,
 *   normalised), the tightest GPU, as in the FGD paper's BestFit baseline.
 */
import { allocatedMilli, type GpuNode } from "../cluster/gpu-node.js";
import type { PodRequest } from "../cluster/pod-request.js";
import { freeAfter, type PlacementPolicy, pickByFree } from "./placement-policy.js";

const gpuCapacity = (node: GpuNode) => Math.max(1, node.free.length * 1000);

export function createSpreadPolicy(): PlacementPolicy {
  return {
    name: "spread",
    version: 0,
    observe() {},
    forPod: (req: PodRequest) => ({
      score: (node) => 100 - Math.floor((allocatedMilli(node) * 100) / gpuCapacity(node)),
      devices: (node) => pickByFree(node, req, "emptiest"),
    }),
  };
}

export function createBinpackPolicy(): PlacementPolicy {
  return {
    name: "binpack",
    version: 0,
    observe() {},
    forPod: (req: PodRequest) => ({
      score: (node) => 1 - freeAfter(node, req) / gpuCapacity(node),
      devices: (node) => pickByFree(node, req, "tightest"),
    }),
  };
}

export function createBestfitPolicy(): PlacementPolicy {
  return {
    name: "bestfit",
    version: 0,
    observe() {},
    forPod: (req: PodRequest) => ({
      score(node) {
        const gpuLeft = freeAfter(node, req) / 1000;
        const cpuLeft = (node.cpuFree - req.cpuMilli) / Math.max(1, node.cpuMilli);
        const memLeft = (node.memFree - req.memMiB) / Math.max(1, node.memMiB);
        return -(gpuLeft + (cpuLeft + memLeft) / 2);
      },
      devices: (node) => pickByFree(node, req, "tightest"),
    }),
  };
}
