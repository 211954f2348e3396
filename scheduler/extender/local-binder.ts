/**
 * Bind without an apiserver, for the local cluster (cluster/local-cluster-source.ts): the placement the
 * extender assumed at bind becomes the pod's for good, as seeing the pod bound would make it in a
 * cluster. Nothing is written anywhere; the pod holds its GPUs until the process ends.
 */
import type { ClusterState } from "../cluster/cluster-state.js";
import type { Binder } from "./scheduling-service.js";

export function createLocalBinder(state: ClusterState): Binder {
  return {
    async bind(pod, node) {
      if (!state.confirm(pod.uid, node))
        throw new Error(`pod ${pod.namespace}/${pod.name} is not placed on ${node}`);
    },
  };
}
