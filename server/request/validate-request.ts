/**
 * Validation shared by every protocol: the request is well-formed, within the gateway's limits and for a
 * served model. Throws INVALID_ARGUMENT or NOT_FOUND (from gateway-error.ts) naming the field. (Admission
 * under a tenant's limits is server/tenants/admission.ts.)
 */
import type { GatewayConfig } from "../config/gateway-config.js";
import { invalidRequest, modelNotFound } from "../errors/gateway-error.js";
import type { ModelEntry, RoutingTable } from "../routing/routing-table.js";
import { type InferenceRequest, MAX_EMBED_INPUTS, type Priority } from "./inference-request.js";

const MAX_KEY_LENGTH = 256;
/** The longest model name (as in the config schema). */
const MAX_MODEL_NAME = 256;

function range(name: string, value: number | undefined, min: number, max: number, minExclusive = false) {
  if (value === undefined) return;
  if (!Number.isFinite(value) || value > max || (minExclusive ? value <= min : value < min)) {
    throw invalidRequest(`${name} must be ${minExclusive ? "above" : "at least"} ${min} and at most ${max}`);
  }
}

/** Validates a request and returns its model's routing entry. */
export function validateRequest(
  req: InferenceRequest,
  table: RoutingTable,
  config: GatewayConfig,
): ModelEntry {
  if (req.model === "") throw invalidRequest("model is required");
  if (req.model.length > MAX_MODEL_NAME)
    throw invalidRequest(`model must be at most ${MAX_MODEL_NAME} characters`);
  if (req.prompt !== undefined) {
    if (req.prompt.length === 0) throw invalidRequest("prompt must not be empty");
  } else if (req.embed !== undefined) {
    const { inputs, dimensions } = req.embed;
    if (inputs.length === 0) throw invalidRequest("input must not be empty");
    if (inputs.length > MAX_EMBED_INPUTS)
      throw invalidRequest(`input must have at most ${MAX_EMBED_INPUTS} items`);
    if (inputs.some((t) => t.length === 0)) throw invalidRequest("input must not contain empty strings");
    if (dimensions !== undefined && (!Number.isInteger(dimensions) || dimensions < 1 || dimensions > 65_536))
      throw invalidRequest("dimensions must be an integer from 1 to 65536");
  } else {
    const messages = req.messages ?? [];
    if (messages.length === 0) throw invalidRequest("messages must not be empty");
    if (messages.every((m) => m.content.length === 0)) throw invalidRequest("messages must not all be empty");
  }
  const s = req.sampling;
  if (s.maxTokens !== undefined && (!Number.isInteger(s.maxTokens) || s.maxTokens < 1)) {
    throw invalidRequest("max_tokens must be a positive integer");
  }
  if ((s.maxTokens ?? 0) > config.limits.maxTokens) {
    throw invalidRequest(`max_tokens must be at most ${config.limits.maxTokens}`);
  }
  range("temperature", s.temperature, 0, 2);
  range("top_p", s.topP, 0, 1, true);
  if (s.topK !== undefined && (!Number.isInteger(s.topK) || s.topK < -1)) {
    throw invalidRequest("top_k must be -1 or a positive integer");
  }
  range("presence_penalty", s.presencePenalty, -2, 2);
  range("frequency_penalty", s.frequencyPenalty, -2, 2);
  if (s.stop.length > config.limits.maxStopSequences) {
    throw invalidRequest(`at most ${config.limits.maxStopSequences} stop sequences are allowed`);
  }
  if (s.stop.some((x) => x.length === 0 || x.length > MAX_KEY_LENGTH)) {
    throw invalidRequest(`stop sequences must be 1 to ${MAX_KEY_LENGTH} characters`);
  }
  if (req.affinityKey.length > MAX_KEY_LENGTH) {
    throw invalidRequest(`affinity key must be at most ${MAX_KEY_LENGTH} characters`);
  }
  if (req.version.length > 63) throw invalidRequest("version must be at most 63 characters");
  // A model, or a LoRA adapter of one (the request then runs on that model's replicas with the adapter).
  const model = table.model(req.model) ?? table.modelOfAdapter(req.model);
  if (model === undefined) throw modelNotFound(req.model);
  return model;
}

/** A criticality header's value; INVALID_ARGUMENT for one that is not critical, standard or sheddable. */
export function priorityHeader(value: string | null | undefined): Priority | undefined {
  if (value === null || value === undefined || value === "") return undefined;
  const v = value.trim().toLowerCase();
  if (v === "critical" || v === "standard" || v === "sheddable") return v;
  throw invalidRequest("the priority header must be critical, standard or sheddable");
}
