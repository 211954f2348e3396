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
  create,
  type DescField,
  type DescMessage,
  fromJson,
  isMessage,
  type JsonValue,
  type MessageInitShape,
  type MessageShape,
  ScalarType,
  toJson,
} from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  FilterResponseSchema,
  HostPrioritySchema,
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
  let repeatedNames: string[] | undefined;
  if (typeof body === "string") {
    const trailing = schema.fields.some((f) => f.jsonName === "NodeNames") ? splitNodeNames(body) : undefined;
    if (trailing !== undefined) {
      repeatedNames = trailing.names;
      body = trailing.rest;
    }
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
  const normalized = normalizeKeys(schema, json, schema.name) as Record<string, JsonValue>;
  // Large lists of strings (NodeNames: thousands of nodes) skip fromJson's per-element work: a JSON
  // string is already a valid string, so only the element types need checking.
  const lists: [DescField, string[]][] = [];
  for (const field of schema.fields) {
    if (field.fieldKind !== "list" || field.listKind !== "scalar" || field.scalar !== ScalarType.STRING)
      continue;
    const value = normalized[field.jsonName];
    if (!Array.isArray(value)) continue;
    if (!value.every((v) => typeof v === "string")) {
      throw new ConnectError(
        `${schema.name}: ${field.jsonName} must be a list of strings`,
        Code.InvalidArgument,
      );
    }
    lists.push([field, value as string[]]);
    delete normalized[field.jsonName];
  }
  let message: MessageShape<Desc>;
  try {
    message = fromJson(schema, normalized, { ignoreUnknownFields: true });
  } catch (err) {
    throw new ConnectError(`${schema.name}: ${(err as Error).message}`, Code.InvalidArgument);
  }
  for (const [field, value] of lists) (message as Record<string, unknown>)[field.localName] = value;
  if (repeatedNames !== undefined) (message as { nodeNames?: string[] }).nodeNames = repeatedNames;
  return message;
}

/**
 * kube-scheduler writes ExtenderArgs with NodeNames last ({"Pod":…,"Nodes":null,"NodeNames":[…]}) and sends
 * the same list of thousands of names for pod after pod. When the body ends that way, the list's text is
 * cut off (the rest is parsed as usual, with NodeNames null) and, when it is the same text as last time,
 * the array parsed then is used again: no 80 KB parse, no 5,000 new strings, and the service's resolved
 * node list stays valid (scheduling-service.ts). The array is shared: nobody may change it.
 */
let lastNodeNames: { text: string; names: string[] } | undefined;

/** The index just after the last non-whitespace character before `end`. */
function trimEnd(body: string, end: number): number {
  let i = end;
  while (
    i > 0 &&
    (body[i - 1] === " " || body[i - 1] === "\n" || body[i - 1] === "\r" || body[i - 1] === "\t")
  )
    i--;
  return i;
}

/**
 * Finds a trailing `"NodeNames": [...] }` by reading backwards from the end of the body: a few characters
 * and one lastIndexOf, linear in the body whatever it holds (no regular expression runs over input that
 * is not parsed yet). A list whose names contain brackets is not recognised here and takes the generic path.
 */
function splitNodeNames(body: string): { names: string[]; rest: string } | undefined {
  let end = trimEnd(body, body.length);
  if (body[end - 1] !== "}") return undefined;
  end = trimEnd(body, end - 1);
  if (body[end - 1] !== "]") return undefined;
  const open = body.lastIndexOf("[", end - 1);
  if (open < 0) return undefined;
  let k = trimEnd(body, open);
  if (body[k - 1] !== ":") return undefined;
  k = trimEnd(body, k - 1);
  const key = '"NodeNames"';
  if (k < key.length || !body.startsWith(key, k - key.length)) return undefined;
  const text = body.slice(open, end);
  let names: string[];
  if (lastNodeNames?.text === text) names = lastNodeNames.names;
  else {
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      return undefined; // not what it looked like: the generic path reports it
    }
    if (!Array.isArray(parsed) || !parsed.every((n) => typeof n === "string")) return undefined;
    names = parsed as string[];
    lastNodeNames = { text, names };
  }
  return { names, rest: `${body.slice(0, k - key.length)}"NodeNames":null}` };
}

/**
 * Writes a message, or a plain init object of one, in the extender's wire form: PascalCase keys, empty
 * lists and maps present (so that NodeNames is never null), the prioritize reply as a bare array.
 *
 * Plain init objects are written straight from the descriptors (json names, default values for unset
 * fields) without building messages first: a reply about thousands of nodes would otherwise spend most of
 * its time in reflection. The result is exactly toJson's with alwaysEmitImplicit (a test checks it).
 */
export function toExtenderJson<Desc extends DescMessage>(
  schema: Desc,
  message: MessageShape<Desc> | MessageInitShape<Desc>,
): JsonValue {
  if (schema.typeName === PrioritizeResponseSchema.typeName) {
    const list = (message as { hostPriorities?: readonly unknown[] }).hostPriorities ?? [];
    return list.map((p) => writePlain(HostPrioritySchema, p));
  }
  return writePlain(schema, message);
}

/**
 * The prioritize reply as JSON text, written directly: for thousands of nodes, building the objects and
 * then stringifying them costs more than deciding the scores. Keys come from HostPriority's descriptor;
 * the result equals JSON.stringify(toExtenderJson(PrioritizeResponseSchema, reply)) (a test checks it).
 */
const SAFE_NAME = /^[a-z0-9.-]*$/;

export function prioritizeReplyText(hostPriorities: readonly { host?: string; score?: number }[]): string {
  const [hostField, scoreField] = HostPrioritySchema.fields;
  const hostKey = JSON.stringify(hostField?.jsonName);
  const scoreKey = JSON.stringify(scoreField?.jsonName);
  const parts = new Array<string>(hostPriorities.length);
  for (let i = 0; i < hostPriorities.length; i++) {
    const p = hostPriorities[i] as { host?: string; score?: number };
    const host = p.host ?? "";
    // Node names are DNS-1123 names, which need no JSON escaping; anything else is escaped.
    const quoted = SAFE_NAME.test(host) ? `"${host}"` : JSON.stringify(host);
    parts[i] = `{${hostKey}:${quoted},${scoreKey}:${Math.trunc(p.score ?? 0)}}`;
  }
  return `[${parts.join(",")}]`;
}

/**
 * The filter reply as JSON text, written directly (node names and reasons are strings); keys come from
 * FilterResponse's descriptor. Equals JSON.stringify(toExtenderJson(FilterResponseSchema, reply)) when the
 * reply carries no Nodes (nodeCacheCapable mode); full mode goes through toExtenderJson.
 */
export function filterReplyText(reply: {
  nodeNames?: readonly string[];
  failedNodes?: Readonly<Record<string, string>>;
  failedAndUnresolvableNodes?: Readonly<Record<string, string>>;
  error?: string;
}): string {
  const key = (localName: string) =>
    JSON.stringify(FilterResponseSchema.fields.find((f) => f.localName === localName)?.jsonName);
  // Native JSON.stringify writes a plain object of strings as fast as anything written by hand here.
  const map = (m: Readonly<Record<string, string>> | undefined) => JSON.stringify(m ?? {});
  return (
    `{${key("nodeNames")}:${JSON.stringify(reply.nodeNames ?? [])},` +
    `${key("failedNodes")}:${map(reply.failedNodes)},` +
    `${key("failedAndUnresolvableNodes")}:${map(reply.failedAndUnresolvableNodes)},` +
    `${key("error")}:${JSON.stringify(reply.error ?? "")}}`
  );
}

/**
 * toJson(schema, value, {alwaysEmitImplicit: true}) for messages and plain init objects. The extender's
 * own structs are written field by field; messages, and the Kubernetes objects embedded in them (many
 * field kinds, never on the hot path), go through protobuf-es.
 */
function writePlain(schema: DescMessage, value: unknown): JsonValue {
  if (isMessage(value)) return toJson(schema, value, { alwaysEmitImplicit: true });
  if (!isExtenderStruct(schema)) {
    return toJson(schema, create(schema, value as MessageInitShape<DescMessage>), {
      alwaysEmitImplicit: true,
    });
  }
  const v = (value ?? {}) as Record<string, unknown>;
  const out: Record<string, JsonValue> = {};
  for (const field of schema.fields) {
    const x = v[field.localName];
    if (field.fieldKind === "message") {
      // Unset message fields are omitted, as toJson does.
      if (x !== undefined) out[field.jsonName] = writePlain(field.message, x);
    } else if (field.fieldKind === "scalar" && field.scalar === ScalarType.STRING) {
      out[field.jsonName] = (x as string | undefined) ?? "";
    } else if (field.fieldKind === "scalar" && field.scalar === ScalarType.INT32) {
      out[field.jsonName] = (x as number | undefined) ?? 0;
    } else if (field.fieldKind === "list" && field.listKind === "message") {
      out[field.jsonName] = ((x as unknown[] | undefined) ?? []).map((item) =>
        writePlain(field.message, item),
      );
    } else if (field.fieldKind === "list" && field.scalar === ScalarType.STRING) {
      out[field.jsonName] = [...((x as string[] | undefined) ?? [])];
    } else if (field.fieldKind === "map" && field.mapKind === "message") {
      const entries = Object.entries((x as Record<string, unknown> | undefined) ?? {});
      out[field.jsonName] = Object.fromEntries(
        entries.map(([k, item]) => [k, writePlain(field.message, item)]),
      );
    } else if (field.fieldKind === "map" && field.scalar === ScalarType.STRING) {
      out[field.jsonName] = { ...((x as Record<string, string> | undefined) ?? {}) };
    } else {
      // The extender's structs use only the kinds above; a new one must be added here (a test writes them all).
      throw new Error(`${schema.typeName}.${field.name}: a field kind the extender writer does not handle`);
    }
  }
  return out;
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
