/**
 * The control store and rollout leader a gateway runs with, from its config's `control` section:
 * memory (one gateway), a file (one machine), or KinferModel objects and a Lease (a cluster).
 */
import { readFileSync } from "node:fs";
import { hostname } from "node:os";
import type { KubeConfig } from "@kubernetes/client-node";
import type { GatewayConfig } from "../config/gateway-config.js";
import type { ControlStore } from "./control-state.js";
import { createFileControlStore } from "./file-control-store.js";
import { createKubeControlStore } from "./kube-control-store.js";
import { alwaysLeader, createLeaseElector, type LeaderElector } from "./lease.js";
import { createMemoryControlStore } from "./memory-control-store.js";

const SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/** The pod's namespace (from its ServiceAccount mount), else "default". */
export function podNamespace(): string {
  try {
    return readFileSync(SERVICE_ACCOUNT_NAMESPACE, "utf8").trim() || "default";
  } catch {
    return "default";
  }
}

export interface OpenedControl {
  control: ControlStore;
  leader: LeaderElector;
}

export async function openControl(
  config: GatewayConfig,
  kubeConfig: () => KubeConfig,
  log: (message: string, fields?: Record<string, unknown>) => void,
): Promise<OpenedControl> {
  const c = config.control;
  if (c.store === "memory") return { control: createMemoryControlStore(), leader: alwaysLeader() };
  if (c.store === "file") {
    const control = createFileControlStore({
      file: c.file as string,
      onError: (err) =>
        log("control state file not applied; keeping the state in force", { err: err.message }),
    });
    return { control, leader: alwaysLeader() };
  }
  const kc = kubeConfig();
  const namespace = c.namespace ?? podNamespace();
  const control = createKubeControlStore(kc, { namespace, log });
  await control.synced;
  const leader = createLeaseElector(kc, {
    namespace,
    name: c.lease.name,
    identity: process.env.POD_NAME ?? hostname(),
    leaseDurationMs: c.lease.durationMs,
    renewDeadlineMs: c.lease.renewDeadlineMs,
    retryPeriodMs: c.lease.retryPeriodMs,
    log,
  });
  return { control, leader };
}
