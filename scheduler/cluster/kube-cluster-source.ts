/**
 * Feeds the ClusterState from Kubernetes with @kubernetes/client-node informers on nodes and pods.
 *
 * Informers are supervised (common/kube/supervise-informer.ts): restarted after errors and after
 * silence. A restart relists, which replays every object as an update: the cache's upserts are
 * idempotent.
 */
import { fromJson, type JsonValue } from "@bufbuild/protobuf";
import { CoreV1Api, type KubeConfig, makeInformer, type V1Node, type V1Pod } from "@kubernetes/client-node";
import { superviseInformer } from "../../common/kube/supervise-informer.js";
import { NodeSchema, PodSchema } from "../../gen/es/kinfer/scheduling/v1/scheduling_pb.js";
import type { ClusterState } from "./cluster-state.js";
import { nodeInfoOf, placedPodOf } from "./kube-objects.js";

export interface KubeSourceOptions {
  /** Restart an informer that has delivered no event for this long. Default 5 minutes. */
  silenceMs?: number;
  log?: (message: string, fields?: Record<string, unknown>) => void;
}

export interface KubeSource {
  /** Resolves when both informers have listed once. */
  readonly synced: Promise<void>;
  close(): Promise<void>;
}

/** The scheduling proto's view of a client-node object (unknown fields, Dates among them, are skipped). */
const asProto = <T>(schema: Parameters<typeof fromJson>[0], obj: unknown) =>
  fromJson(schema, obj as JsonValue, { ignoreUnknownFields: true }) as T;

export function startKubeSource(
  kc: KubeConfig,
  state: ClusterState,
  options: KubeSourceOptions = {},
): KubeSource {
  const log = options.log ?? (() => {});
  const silenceMs = options.silenceMs ?? 300_000;
  const core = kc.makeApiClient(CoreV1Api);

  const nodes = makeInformer<V1Node>(kc, "/api/v1/nodes", () => core.listNode());
  const pods = makeInformer<V1Pod>(kc, "/api/v1/pods", () => core.listPodForAllNamespaces());
  const nodeWatch = superviseInformer("node", nodes, silenceMs, log);
  const podWatch = superviseInformer("pod", pods, silenceMs, log);

  const onNode = (obj: V1Node) => {
    nodeWatch.touch();
    const info = nodeInfoOf(asProto(NodeSchema, obj));
    if (info.name !== "") state.upsertNode(info);
  };
  nodes.on("add", onNode);
  nodes.on("update", onNode);
  nodes.on("delete", (obj) => {
    nodeWatch.touch();
    if (obj.metadata?.name) state.removeNode(obj.metadata.name);
  });

  const onPod = (obj: V1Pod) => {
    podWatch.touch();
    const placed = placedPodOf(asProto(PodSchema, obj));
    if (placed !== undefined) state.upsertPod(placed);
    else if (obj.metadata?.uid && (obj.status?.phase === "Succeeded" || obj.status?.phase === "Failed")) {
      state.removePod(obj.metadata.uid); // finished: its resources are free
    }
    // A pod not bound yet holds nothing, but may be an assumption in flight (bind annotates it before
    // binding it): leave that alone; it is confirmed when the pod shows up bound, or expires.
  };
  pods.on("add", onPod);
  pods.on("update", onPod);
  pods.on("delete", (obj) => {
    podWatch.touch();
    if (obj.metadata?.uid) state.removePod(obj.metadata.uid);
  });

  const synced = Promise.all([nodes.start(), pods.start()]).then(() => undefined);
  return {
    synced,
    async close() {
      await Promise.all([nodeWatch.stop(), podWatch.stop()]);
    },
  };
}
