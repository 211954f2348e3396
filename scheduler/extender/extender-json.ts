/**
 * The kube-scheduler extender wire format, read and written through the scheduling proto's JSON mapping.
 *
 * kube-scheduler's extender structs have no json tags, so it sends PascalCase keys ("Pod", "NodeNames")
 * and Go's encoding/json matches keys case-insensitively. The proto gives those messages PascalCase
 * json_names; this module adds the case-insensitive matching (driven by the descriptors, not by a second
 * hand-written model) and the one shape proto JSON cannot express: the prioritize reply is a bare array.
 * Embedded Kubernetes objects (Pod, Node) keep their camelCase keys and are passed through untouched.
 *
 * It never throws anything but a ConnectError with Code.InvalidArgument, whose message says what is wrong.
 */
import {
  type DescField,
  type DescMessage,
  fromJson,
  type JsonValue,
  type MessageShape,
  toJson,
} from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  HostPrioritySchema,
  type PrioritizeResponse,
  PrioritizeResponseSchema,
} from "../../gen/es/kinfer/scheduling/v1/scheduling_pb.js";

/**
 * Parses an extender request body (text or already-parsed JSON) into a message of `schema`.
 * Unknown fields are ignored, as kube-scheduler's Kubernetes objects carry many more than we model.
 */
export function parseExtenderJson<Desc extends DescMessage>(
  schema: Desc,
  body: string | JsonValue,
): MessageShape<Desc> {
  let json: JsonValue;
  if (typeof body === "string") {
    try {
      json = JSON.parse(body) as JsonValue;
    } catch (err) {
      throw new ConnectError(`malformed JSON: ${(err as Error).message}`, Code.InvalidArgument);
    }
  } else {
    json = body;
  }
  if (json === null || typeof json !== "object" || Array.isArray(json)) {
    throw new ConnectError(`${schema.name}: expected a JSON object`, Code.InvalidArgument);
  }
  const normalized = normalizeKeys(schema, json, schema.name);
  try {
    return fromJson(schema, normalized, { ignoreUnknownFields: true });
  } catch (err) {
    throw new ConnectError(`${schema.name}: ${(err as Error).message}`, Code.InvalidArgument);
  }
}

/**
 * Writes a message in the extender's wire form: PascalCase keys, empty lists and maps present
 * (so that NodeNames is never null), and the prioritize reply as a bare array.
 */
export function toExtenderJson<Desc extends DescMessage>(
  schema: Desc,
  message: MessageShape<Desc>,
): JsonValue {
  if (schema.typeName === PrioritizeResponseSchema.typeName) {
    return (message as PrioritizeResponse).hostPriorities.map((p) =>
      toJson(HostPrioritySchema, p, { alwaysEmitImplicit: true }),
    );
  }
  return toJson(schema, message, { alwaysEmitImplicit: true });
}

/** Whether a message is one of the extender's Go structs (PascalCase keys), not a Kubernetes object. */
function isExtenderStruct(schema: DescMessage): boolean {
  return schema.fields.length > 0 && schema.fields.every((f) => /^[A-Z]/.test(f.jsonName));
}

/**
 * Rewrites the keys of extender structs to their canonical json_name, matching case-insensitively as Go
 * does, and recurses into nested extender structs. Two keys that fold to the same field are rejected.
 */
function normalizeKeys(schema: DescMessage, json: JsonValue, path: string): JsonValue {
  if (!isExtenderStruct(schema) || json === null || typeof json !== "object" || Array.isArray(json)) {
    return json;
  }
  const byFoldedName = new Map<string, DescField>();
  for (const field of schema.fields) {
    byFoldedName.set(field.jsonName.toLowerCase(), field);
    byFoldedName.set(field.name.toLowerCase(), field);
  }
  const out: Record<string, JsonValue> = {};
  for (const [key, value] of Object.entries(json)) {
    const field = byFoldedName.get(key.toLowerCase());
    if (field === undefined) {
      out[key] = value; // unknown: ignored by fromJson
      continue;
    }
    if (field.jsonName in out) {
      throw new ConnectError(
        `${path}: duplicate key "${key}" for field ${field.jsonName}`,
        Code.InvalidArgument,
      );
    }
    out[field.jsonName] = normalizeField(field, value, `${path}.${field.jsonName}`);
  }
  return out;
}

function normalizeField(field: DescField, value: JsonValue, path: string): JsonValue {
  if (value === null || typeof value !== "object") return value;
  switch (field.fieldKind) {
    case "message":
      return normalizeKeys(field.message, value, path);
    case "list":
      if (field.listKind === "message" && Array.isArray(value)) {
        return value.map((item, i) => normalizeKeys(field.message, item, `${path}[${i}]`));
      }
      return value;
    case "map":
      if (field.mapKind === "message" && !Array.isArray(value)) {
        return Object.fromEntries(
          Object.entries(value).map(([k, v]) => [k, normalizeKeys(field.message, v, `${path}["${k}"]`)]),
        );
      }
      return value;
    default:
      return value;
  }
}
