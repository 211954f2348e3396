/**
 * Global setup of the k8s test project: builds the control plane binaries if needed (once; cached outside
 * the repository) and starts one shared control plane, whose URL, token and kubeconfig the tests read with
 * `inject`. Tests that need a private one (an apiserver restart) start their own from the same binaries.
 */
import type { TestProject } from "vitest/node";
import { type ControlPlane, startControlPlane } from "./control-plane.js";

let controlPlane: ControlPlane | undefined;

export async function setup(project: TestProject) {
  controlPlane = await startControlPlane();
  project.provide("k8s", {
    url: controlPlane.url,
    token: controlPlane.token,
    kubeconfig: controlPlane.kubeconfig,
    caFile: controlPlane.caFile,
    bin: controlPlane.bin,
  });
}

export async function teardown() {
  await controlPlane?.stop();
}

declare module "vitest" {
  export interface ProvidedContext {
    k8s: { url: string; token: string; kubeconfig: string; caFile: string; bin: string };
  }
}
