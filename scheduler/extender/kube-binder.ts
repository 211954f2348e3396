/**
 * Binds pods through the Kubernetes API: first records the chosen devices on the pod (annotation
 * kinfer.io/gpu-devices, a JSON merge patch), so that any scheduler restart rebuilds the same accounting,
 * then creates the Binding. If the pod changed or was deleted meanwhile, the API's error is returned and
 * kube-scheduler retries the pod.
 */
import { CoreV1Api, type KubeConfig, PatchStrategy, setHeaderOptions } from "@kubernetes/client-node";
import { DEVICES_ANNOTATION, formatDevices } from "../cluster/pod-request.js";
import type { Binder } from "./scheduling-service.js";

export function createKubeBinder(kc: KubeConfig): Binder {
  const core = kc.makeApiClient(CoreV1Api);
  return {
    async bind(pod, node, devices) {
      if (devices.length > 0) {
        await core.patchNamespacedPod(
          {
            name: pod.name,
            namespace: pod.namespace,
            body: {
              metadata: { uid: pod.uid, annotations: { [DEVICES_ANNOTATION]: formatDevices(devices) } },
            },
          },
          setHeaderOptions("Content-Type", PatchStrategy.MergePatch),
        );
      }
      await core.createNamespacedBinding({
        namespace: pod.namespace,
        body: {
          apiVersion: "v1",
          kind: "Binding",
          metadata: { name: pod.name, namespace: pod.namespace, uid: pod.uid },
          target: { apiVersion: "v1", kind: "Node", name: node },
        },
      });
    },
  };
}
