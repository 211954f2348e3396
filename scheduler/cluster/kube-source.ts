/**
 * Feeds the ClusterState from Kubernetes with @kubernetes/client-node informers on nodes and pods.
 *
 * client-node 1.4.0 informers relist on 410 Gone and re-watch when the server closes a watch, but stop on
 * any other error until started again, and a watch can go silent without an error (client-node issues
 * #596, #958). So: every error restarts the informer after a backoff (1 s doubling to 30 s), and a
 * watchdog restarts an informer that has delivered nothing for `silenceMs`. A restart relists, which
 * replays every object as an update: the cache's upserts are idempotent.
 */
import { fromJson, type JsonValue } from "@bufbuild/protobuf";
import {
  CoreV1Api,
  type Informer,
  type KubeConfig,
  type KubernetesObject,
  makeInformer,
  type V1Node,
  type V1Pod,
} from "@kubernetes/client-node";
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

function supervise<T extends KubernetesObject>(
  name: string,
  informer: Informer<T>,
  silenceMs: number,
  log: NonNullable<KubeSourceOptions["log"]>,
): { touch(): void; stop(): Promise<void> } {
  let lastEvent = Date.now();
  let backoff = 1000;
  let stopped = false;
  let restartTimer: NodeJS.Timeout | undefined;
  const restart = (why: string) => {
    if (stopped || restartTimer !== undefined) return;
    log(`${name} informer restarting`, { why, backoffMs: backoff });
    restartTimer = setTimeout(() => {
      restartTimer = undefined;
      lastEvent = Date.now();
      informer
        .stop()
        .catch(() => {})
        .then(() => informer.start())
        .then(
          () => {
            backoff = 1000;
          },
          (err: unknown) => {
            backoff = Math.min(backoff * 2, 30_000);
            restart(String(err));
          },
        );
    }, backoff);
  };
  informer.on("error", (err) => restart(String(err)));
  const watchdog = setInterval(
    () => {
      if (Date.now() - lastEvent > silenceMs) restart(`no event for ${silenceMs} ms`);
    },
    Math.min(60_000, silenceMs),
  );
  watchdog.unref();
  return {
    touch() {
      lastEvent = Date.now();
    },
    async stop() {
      stopped = true;
      clearTimeout(restartTimer);
      clearInterval(watchdog);
      await informer.stop();
    },
  };
}

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
  const nodeWatch = supervise("node", nodes, silenceMs, log);
  const podWatch = supervise("pod", pods, silenceMs, log);

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
    else if (obj.metadata?.uid) state.removePod(obj.metadata.uid); // finished or not bound
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
