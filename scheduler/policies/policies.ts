/** Creates a policy by name (config and the kinfer.io/placement-policy annotation use these names). */
import { createFragmentationPolicy } from "./fragmentation-policy.js";
import { type PlacementPolicy, POLICY_NAMES, type PolicyName } from "./placement-policy.js";
import { createBestfitPolicy, createBinpackPolicy, createSpreadPolicy } from "./simple-policies.js";

export function isPolicyName(name: string): name is PolicyName {
  return (POLICY_NAMES as readonly string[]).includes(name);
}

export function createPolicy(name: PolicyName): PlacementPolicy {
  switch (name) {
    case "spread":
      return createSpreadPolicy();
    case "binpack":
      return createBinpackPolicy();
    case "bestfit":
      return createBestfitPolicy();
    case "fragmentation":
      return createFragmentationPolicy();
  }
}
