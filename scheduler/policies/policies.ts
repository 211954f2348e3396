/** Creates a policy by name (config and the kinfer.io/placement-policy annotation use these names). */
import type { PodRequest } from "../cluster/pod-request.js";
import { createFgdReferencePolicy } from "./fgd-reference-policy.js";
import { createFragmentationPolicy } from "./fragmentation-policy.js";
import { type PlacementPolicy, POLICY_NAMES, type PolicyName } from "./placement-policy.js";
import { createBestfitPolicy, createBinpackPolicy, createSpreadPolicy } from "./simple-policies.js";

export function isPolicyName(name: string): name is PolicyName {
  return (POLICY_NAMES as readonly string[]).includes(name);
}

/** What a policy may be told about the workload it will place. */
export interface PolicyContext {
  /**
   * The whole workload, known before any pod is placed (the trace replay): fgd-reference takes its
   * typical pods from it, as the FGD simulator does. The other policies ignore it. Default: unknown.
   */
  workload?: readonly PodRequest[];
}

export function createPolicy(name: PolicyName, context: PolicyContext = {}): PlacementPolicy {
  switch (name) {
    case "spread":
      return createSpreadPolicy();
    case "binpack":
      return createBinpackPolicy();
    case "bestfit":
      return createBestfitPolicy();
    case "fragmentation":
      return createFragmentationPolicy();
    case "fgd-reference":
      return createFgdReferencePolicy(context.workload === undefined ? {} : { workload: context.workload });
  }
}
