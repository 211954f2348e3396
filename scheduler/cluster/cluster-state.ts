/**
 * The scheduler's cache of the cluster: GPU nodes and the pods that hold resources on them, with
 * device-level accounting. Fed by the Kubernetes informers in production (kube-cluster-source.ts), by a
 * file on a laptop (local-cluster-source.ts) and directly by tests; nothing here talks to the API server.
 *
 * Invariants: a GPU's allocated share never exceeds 1000 and a node's CPU and memory are never
 * over-committed. A pod bound by this scheduler carries its devices in the kinfer.io/gpu-devices
 * annotation, so a restarted scheduler rebuilds the same accounting. A placement in flight (assumed at
 * bind, before the pod is seen bound) counts until the pod appears bound or the assumption expires.
 * Pods that already hold resources but whose devices are unknown (bound by another scheduler) get the
 * first free devices that fit, as the placement code lists them.
 */

import { candidatePlacements } from "./fit.js";
import {
  allocate,
  createGpuNode,
  type DeviceShare,
  type GpuNode,
  nextGeneration,
  release,
} from "./gpu-node.js";
import type { PodRequest } from "./pod-request.js";

/** What the cache needs to know about a node. */
export interface NodeInfo {
  readonly name: string;
  readonly model: string;
  readonly cpuMilli: number;
  readonly memMiB: number;
  readonly gpus: number;
  readonly nvlinkDomainSize: number;
  readonly schedulable: boolean;
}

/** A pod that holds (or is about to hold) resources on a node. */
export interface PlacedPod {
  readonly uid: string;
  /** namespace/name, for logs and Explain. */
  readonly key: string;
  readonly node: string;
  readonly request: PodRequest;
  /** Devices from the pod's annotation, if it has one. */
  readonly devices?: readonly DeviceShare[] | undefined;
}

interface Holding {
  readonly pod: PlacedPod;
  readonly devices: readonly DeviceShare[];
  /** Set while the placement is assumed (bind sent, pod not yet seen bound): when it expires. */
  assumedUntil: number | undefined;
}

export interface ClusterState {
  readonly nodes: ReadonlyMap<string, GpuNode>;
  /** Bumped whenever a node is added, rebuilt (new GpuNode object) or removed: for caches of node lists. */
  readonly nodesVersion: number;
  upsertNode(info: NodeInfo): void;
  removeNode(name: string): void;
  /** A pod seen bound (or running) on a node. Returns the devices it holds. */
  upsertPod(pod: PlacedPod): readonly DeviceShare[] | undefined;
  /** A pod that ended or was deleted: its resources are free again. */
  removePod(uid: string): void;
  /** A placement decided by this scheduler, counted until confirmed by upsertPod or until it expires. */
  assume(pod: PlacedPod, devices: readonly DeviceShare[], ttlMs: number): void;
  /** Drops the pod's placement if it is still only assumed (a reservation); true if there was one. */
  unassume(uid: string): boolean;
  /**
   * Makes an assumed placement on `node` final, as seeing the pod bound there would (the local cluster's
   * bind); false if the pod holds nothing on that node.
   */
  confirm(uid: string, node: string): boolean;
  /** Drops expired assumptions; returns how many. */
  expireAssumed(): number;
  /** The devices a pod holds. */
  devicesOf(uid: string): readonly DeviceShare[] | undefined;
  /** The pod holding resources under this uid (bound or assumed), if any. */
  podOf(uid: string): PlacedPod | undefined;
  /** Pods holding resources on a node (bound or assumed), oldest first. */
  pods(): IterableIterator<PlacedPod>;
  readonly podCount: number;
}

function anyWholeGpus(node: GpuNode, gpus: number): DeviceShare[] | undefined {
  const devices: DeviceShare[] = [];
  for (let i = 0; i < node.free.length && devices.length < gpus; i++)
    if (node.free[i] === 1000) devices.push({ index: i, milli: 1000 });
  return gpus > 0 && devices.length === gpus ? devices : undefined;
}

export function createClusterState(now: () => number = () => Date.now()): ClusterState {
  const nodes = new Map<string, GpuNode>();
  const holdings = new Map<string, Holding>();
  /** Pods seen on nodes not (yet) in the cache: informers may deliver a pod before its node. */
  const orphans = new Map<string, PlacedPod>();
  let nodesVersion = 0;

  function place(
    node: GpuNode,
    pod: PlacedPod,
    preferred: readonly DeviceShare[] | undefined,
  ): readonly DeviceShare[] | undefined {
    const r = pod.request;
    if (r.cpuMilli > node.cpuFree || r.memMiB > node.memFree) return undefined;
    const valid =
      preferred !== undefined &&
      preferred.reduce((s, d) => s + d.milli, 0) === r.gpus * 1000 + r.gpuMilli &&
      preferred.every((d) => d.index < node.free.length && (node.free[d.index] as number) >= d.milli) &&
      new Set(preferred.map((d) => d.index)).size === preferred.length;
    let devices: DeviceShare[] | undefined = valid ? [...preferred] : undefined;
    // Otherwise first fit: the lowest free devices within one NVLink domain, as this scheduler would
    // place them; failing that, any free whole GPUs (a pod placed by someone else still holds its GPUs).
    devices ??= candidatePlacements(node, r)[0] ?? anyWholeGpus(node, r.gpus);
    if (devices === undefined) return undefined;
    allocate(node, r.cpuMilli, r.memMiB, devices);
    return devices;
  }

  function unplace(uid: string): void {
    const h = holdings.get(uid);
    if (h === undefined) return;
    holdings.delete(uid);
    const node = nodes.get(h.pod.node);
    if (node !== undefined) release(node, h.pod.request.cpuMilli, h.pod.request.memMiB, h.devices);
  }

  return {
    nodes,
    get nodesVersion() {
      return nodesVersion;
    },
    upsertNode(info) {
      const old = nodes.get(info.name);
      if (
        old !== undefined &&
        old.model === info.model &&
        old.cpuMilli === info.cpuMilli &&
        old.memMiB === info.memMiB &&
        old.free.length === info.gpus &&
        old.nvlinkDomainSize === info.nvlinkDomainSize
      ) {
        if (old.schedulable !== info.schedulable) {
          old.schedulable = info.schedulable;
          old.generation = nextGeneration();
        }
        return;
      }
      // Capacity changed (or a new node): rebuild it and re-apply the pods on it.
      nodes.set(info.name, createGpuNode({ ...info }));
      nodesVersion++;
      const node = nodes.get(info.name) as GpuNode;
      for (const [uid, h] of holdings) {
        if (h.pod.node !== info.name) continue;
        const devices = place(node, h.pod, h.devices);
        if (devices === undefined)
          holdings.delete(uid); // no longer fits the shrunk node
        else holdings.set(uid, { ...h, devices });
      }
      for (const [uid, pod] of orphans) {
        if (pod.node !== info.name) continue;
        orphans.delete(uid);
        const devices = place(node, pod, pod.devices);
        if (devices !== undefined) holdings.set(uid, { pod, devices, assumedUntil: undefined });
      }
    },
    removeNode(name) {
      if (nodes.delete(name)) nodesVersion++;
      for (const [uid, h] of holdings) {
        if (h.pod.node !== name) continue;
        holdings.delete(uid);
        orphans.set(uid, h.pod); // back if the node returns (a node object re-created)
      }
    },
    upsertPod(pod) {
      const existing = holdings.get(pod.uid);
      if (existing !== undefined && existing.pod.node === pod.node) {
        existing.assumedUntil = undefined; // confirmed
        return existing.devices;
      }
      if (existing !== undefined) unplace(pod.uid);
      const node = nodes.get(pod.node);
      if (node === undefined) {
        orphans.set(pod.uid, pod);
        return undefined;
      }
      const devices = place(node, pod, pod.devices);
      if (devices !== undefined) holdings.set(pod.uid, { pod, devices, assumedUntil: undefined });
      return devices;
    },
    removePod(uid) {
      orphans.delete(uid);
      unplace(uid);
    },
    assume(pod, devices, ttlMs) {
      if (holdings.has(pod.uid)) unplace(pod.uid);
      const node = nodes.get(pod.node);
      if (node === undefined) throw new RangeError(`unknown node ${pod.node}`);
      const placed = place(node, pod, devices);
      if (placed === undefined) throw new RangeError(`${pod.key} no longer fits ${pod.node}`);
      holdings.set(pod.uid, { pod, devices: placed, assumedUntil: now() + ttlMs });
    },
    unassume(uid) {
      if (holdings.get(uid)?.assumedUntil === undefined) return false;
      unplace(uid);
      return true;
    },
    confirm(uid, node) {
      const h = holdings.get(uid);
      if (h === undefined || h.pod.node !== node) return false;
      h.assumedUntil = undefined;
      return true;
    },
    expireAssumed() {
      let n = 0;
      const t = now();
      for (const [uid, h] of holdings) {
        if (h.assumedUntil !== undefined && h.assumedUntil <= t) {
          unplace(uid);
          n++;
        }
      }
      return n;
    },
    devicesOf: (uid) => holdings.get(uid)?.devices,
    podOf: (uid) => holdings.get(uid)?.pod,
    *pods() {
      for (const h of holdings.values()) yield h.pod;
    },
    get podCount() {
      return holdings.size;
    },
  };
}
