/**
 * The cluster without Kubernetes: kinfer-scheduler's cache filled from a file instead of informers, so
 * that the extender, its gRPC API and Explain can be tried on a laptop (`npm start`) with `buf curl`.
 *
 * The file is YAML with Kubernetes objects as `kubectl get -o yaml` writes them (a List, several
 * documents, or an array): Nodes (allocatable cpu, memory and nvidia.com/gpu; labels
 * nvidia.com/gpu.product and kinfer.io/nvlink-domain-size; a Ready condition, which defaults to True
 * here) and Pods already running on them (spec.nodeName, the kinfer.io/gpu-devices annotation for the
 * GPU shares they hold). Or it is an openb node list (`.csv`, data/openb). Nodes and pods are read
 * through the same code as the informers' (kube-objects.ts), so they mean what they would in a cluster.
 *
 * Bind is recorded in memory (extender/local-binder.ts): a pod placed through filter and bind holds its
 * GPUs, as a bound pod would, until the process ends.
 */
import { readFileSync } from "node:fs";
import { fromJson, type JsonValue } from "@bufbuild/protobuf";
import { parseAllDocuments } from "yaml";
import { NodeSchema, PodSchema } from "../../gen/es/kinfer/scheduling/v1/scheduling_pb.js";
import type { ClusterState, NodeInfo, PlacedPod } from "./cluster-state.js";
import { nodeInfoOf, placedPodOf } from "./kube-objects.js";
import { readNodes } from "./openb-trace.js";

/** What a file put into the cache. */
export interface LocalCluster {
  readonly nodes: number;
  readonly pods: number;
}

/** An invalid cluster file: the message names the file and the object. */
export class LocalClusterError extends Error {
  override readonly name = "LocalClusterError";
}

/**
 * Numbers as strings: YAML written by hand says `cpu: 4`, where the API (and the proto's map of
 * quantities) has "4"; proto JSON takes numbers as strings too.
 */
function quantitiesAsStrings(value: unknown): unknown {
  if (typeof value === "number") return String(value);
  if (Array.isArray(value)) return value.map(quantitiesAsStrings);
  if (value !== null && typeof value === "object")
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, quantitiesAsStrings(v)]));
  return value;
}

interface KubeItem {
  kind?: unknown;
  items?: unknown;
  metadata?: { name?: unknown };
  status?: { conditions?: unknown };
}

/** Objects of a parsed document: a List's items, an array's elements, or the object itself. */
function objectsOf(doc: unknown): KubeItem[] {
  if (Array.isArray(doc)) return doc.flatMap(objectsOf);
  if (doc === null || typeof doc !== "object") return [];
  const o = doc as KubeItem;
  if (o.kind === "List" || (o.kind === undefined && Array.isArray(o.items))) return objectsOf(o.items);
  return [o];
}

/** A Node as a file gives it; a node without conditions is Ready (nothing here runs a kubelet). */
function nodeOf(obj: KubeItem, file: string): NodeInfo {
  const withReady =
    obj.status?.conditions === undefined
      ? { ...obj, status: { ...obj.status, conditions: [{ type: "Ready", status: "True" }] } }
      : obj;
  let info: NodeInfo;
  try {
    info = nodeInfoOf(fromJson(NodeSchema, withReady as JsonValue, { ignoreUnknownFields: true }));
  } catch (err) {
    throw new LocalClusterError(`${file}: Node ${String(obj.metadata?.name)}: ${(err as Error).message}`);
  }
  if (info.name === "") throw new LocalClusterError(`${file}: a Node has no metadata.name`);
  return info;
}

function podOf(obj: KubeItem, file: string, index: number): PlacedPod {
  let placed: PlacedPod | undefined;
  try {
    placed = placedPodOf(fromJson(PodSchema, obj as JsonValue, { ignoreUnknownFields: true }));
  } catch (err) {
    throw new LocalClusterError(`${file}: Pod ${String(obj.metadata?.name)}: ${(err as Error).message}`);
  }
  if (placed === undefined)
    throw new LocalClusterError(
      `${file}: Pod ${String(obj.metadata?.name)} holds nothing (no spec.nodeName?)`,
    );
  // Pods written by hand need no uid: their namespace/name identifies them.
  return placed.uid === "" ? { ...placed, uid: `local-${index}-${placed.key}` } : placed;
}

/** Reads a cluster file into the cache; throws LocalClusterError naming what is wrong. */
export function loadLocalCluster(file: string, state: ClusterState): LocalCluster {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    throw new LocalClusterError(`${file}: ${(err as Error).message}`);
  }
  if (file.endsWith(".csv")) {
    let nodes: ReturnType<typeof readNodes>;
    try {
      nodes = readNodes(file);
    } catch (err) {
      throw new LocalClusterError((err as Error).message);
    }
    for (const n of nodes) state.upsertNode({ ...n, nvlinkDomainSize: 0, schedulable: true });
    return { nodes: nodes.length, pods: 0 };
  }
  const objects: KubeItem[] = [];
  for (const doc of parseAllDocuments(text)) {
    if (doc.errors.length > 0)
      throw new LocalClusterError(`${file}: not valid YAML: ${doc.errors[0]?.message}`);
    objects.push(...objectsOf(quantitiesAsStrings(doc.toJS({ maxAliasCount: 100 }))));
  }
  const nodes = objects.filter((o) => o.kind === "Node").map((o) => nodeOf(o, file));
  const pods = objects.filter((o) => o.kind === "Pod").map((o, i) => podOf(o, file, i));
  const other = objects.find((o) => o.kind !== "Node" && o.kind !== "Pod");
  if (other !== undefined)
    throw new LocalClusterError(`${file}: only Nodes and Pods, not ${String(other.kind)}`);
  if (nodes.length === 0) throw new LocalClusterError(`${file}: no Node`);
  for (const n of nodes) state.upsertNode(n);
  for (const p of pods) {
    if (!state.nodes.has(p.node))
      throw new LocalClusterError(`${file}: Pod ${p.key} is on unknown node ${p.node}`);
    if (state.upsertPod(p) === undefined)
      throw new LocalClusterError(`${file}: Pod ${p.key} does not fit on node ${p.node}`);
  }
  return { nodes: nodes.length, pods: pods.length };
}
