/**
 * The scheduling proto's JSON form is the kube-scheduler extender wire format. The fixtures are shaped
 * exactly as Go's encoding/json marshals kube-scheduler's ExtenderArgs (PascalCase struct keys, nil
 * pointers as null, full v1.Pod and v1.NodeList with many fields we do not model).
 */
import { readFileSync } from "node:fs";
import { create, type DescMessage, type JsonValue, toJson } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { createRng } from "../../../common/random.js";
import {
  BindRequestSchema,
  BindResponseSchema,
  FilterRequestSchema,
  FilterResponseSchema,
  PreemptRequestSchema,
  PreemptResponseSchema,
  PrioritizeRequestSchema,
  PrioritizeResponseSchema,
} from "../../../gen/es/kinfer/scheduling/v1/scheduling_pb.js";
import {
  filterReplyText,
  parseExtenderJson,
  prioritizeReplyText,
  toExtenderJson,
} from "../../../scheduler/extender/extender-json.js";

const fixture = (name: string) => readFileSync(new URL(`../fixtures/${name}`, import.meta.url), "utf8");

/** Recursively lower-cases the keys of the extender structs (not of the embedded Kubernetes objects). */
function lowerCaseExtenderKeys(json: string): string {
  return json.replace(/"(Pod|Nodes|NodeNames)":/g, (_, key: string) => `"${key.toLowerCase()}":`);
}

describe("parseExtenderJson", () => {
  it("reads ExtenderArgs in nodeCacheCapable mode as kube-scheduler sends it", () => {
    const args = parseExtenderJson(FilterRequestSchema, fixture("filter-args-node-cache.json"));
    expect(args.nodeNames).toEqual(["gpu-node-1", "gpu-node-2", "gpu-node-3"]);
    expect(args.nodes).toBeUndefined();
    const pod = args.pod;
    expect(pod?.metadata?.name).toBe("llama-3-8b-7d9f8c6b5-x2x4k");
    expect(pod?.metadata?.namespace).toBe("kinfer-models");
    expect(pod?.metadata?.uid).toBe("5f0c7c3e-8a1b-4d2e-9f3a-1b2c3d4e5f60");
    expect(pod?.metadata?.labels["kinfer.io/model"]).toBe("llama-3-8b");
    expect(pod?.metadata?.annotations["kinfer.io/placement-policy"]).toBe("fragmentation");
    expect(pod?.spec?.schedulerName).toBe("gpu-scheduler");
    expect(pod?.spec?.nodeSelector).toEqual({ "kinfer.io/gpu-pool": "inference" });
    expect(pod?.spec?.containers[0]?.resources?.requests["nvidia.com/gpu"]).toBe("2");
    expect(pod?.spec?.containers[0]?.resources?.limits["nvidia.com/gpu"]).toBe("2");
    expect(pod?.spec?.initContainers[0]?.resources?.requests).toEqual({ cpu: "100m" });
    expect(pod?.spec?.tolerations[1]).toMatchObject({
      operator: "Exists",
      effect: "NoExecute",
      tolerationSeconds: 300n,
    });
    expect(pod?.status?.phase).toBe("Pending");
  });

  it("reads ExtenderArgs in full mode with a v1.NodeList", () => {
    const args = parseExtenderJson(FilterRequestSchema, fixture("filter-args-full.json"));
    expect(args.nodeNames).toEqual([]);
    const [gpu, cpu] = args.nodes?.items ?? [];
    expect(gpu?.metadata?.labels["nvidia.com/gpu.product"]).toBe("NVIDIA-H100-80GB-HBM3");
    expect(gpu?.status?.allocatable["nvidia.com/gpu"]).toBe("8");
    expect(gpu?.status?.conditions.find((c) => c.type === "Ready")?.status).toBe("True");
    expect(gpu?.spec?.taints[0]).toMatchObject({ key: "nvidia.com/gpu", effect: "NoSchedule" });
    expect(cpu?.spec?.unschedulable).toBe(true);
  });

  it("matches extender keys case-insensitively, as Go's encoding/json does", () => {
    const canonical = parseExtenderJson(FilterRequestSchema, fixture("filter-args-node-cache.json"));
    const lower = parseExtenderJson(
      FilterRequestSchema,
      lowerCaseExtenderKeys(fixture("filter-args-node-cache.json")),
    );
    expect(lower).toEqual(canonical);
    const mixed = parseExtenderJson(PrioritizeRequestSchema, {
      pOD: { metadata: { name: "p" } },
      nodeNames: ["a"],
    });
    expect(mixed.pod?.metadata?.name).toBe("p");
    expect(mixed.nodeNames).toEqual(["a"]);
    const bind = parseExtenderJson(BindRequestSchema, {
      podname: "p",
      podNamespace: "ns",
      PODUID: "u",
      node: "n1",
    });
    expect(bind).toMatchObject({ podName: "p", podNamespace: "ns", podUid: "u", node: "n1" });
  });

  it("reads preemption args with victims keyed by node", () => {
    const args = parseExtenderJson(PreemptRequestSchema, {
      Pod: { metadata: { name: "big" } },
      NodeNameToMetaVictims: { "gpu-node-1": { Pods: [{ UID: "v1" }, { uid: "v2" }], NumPDBViolations: 1 } },
      NodeNameToVictims: null,
    });
    const victims = args.nodeNameToMetaVictims["gpu-node-1"];
    expect(victims?.pods.map((p) => p.uid)).toEqual(["v1", "v2"]);
    expect(victims?.numPdbViolations).toBe(1);
  });

  it.each([
    ["malformed JSON", "{not json", /malformed JSON/],
    ["a JSON array", "[1,2]", /expected a JSON object/],
    ["null", "null", /expected a JSON object/],
    ["NodeNames of the wrong type", '{"NodeNames":"gpu-node-1"}', /node_names.*expected Array/],
    ["a Pod that is not an object", '{"Pod":42}', /Pod/],
    ["a key given twice in different case", '{"Pod":{},"pod":{}}', /duplicate key "pod"/],
    ["a node name that is not a string", '{"Pod":{},"NodeNames":[1]}', /NodeNames must be a list of strings/],
  ])("rejects %s with InvalidArgument and a message", (_, body, message) => {
    let error: unknown;
    try {
      parseExtenderJson(FilterRequestSchema, body);
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(ConnectError);
    expect((error as ConnectError).code).toBe(Code.InvalidArgument);
    expect((error as ConnectError).rawMessage).toMatch(message);
  });
});

describe("the trailing NodeNames list kube-scheduler repeats", () => {
  const names = Array.from({ length: 2000 }, (_, i) => `node-${i}`);
  const body = (pod: unknown, list: unknown = names) =>
    JSON.stringify({ Pod: pod, Nodes: null, NodeNames: list });
  const pod = (uid: string) => ({
    metadata: { name: "p", uid, annotations: { note: 'a "NodeNames":["evil"]} at the end' } },
  });

  it("reads the same message as the generic path, and hands over the same array when the list repeats", () => {
    const first = parseExtenderJson(FilterRequestSchema, body(pod("1")));
    // The generic path: an already-parsed body skips the cut.
    const generic = parseExtenderJson(FilterRequestSchema, JSON.parse(body(pod("1"))));
    expect(first).toEqual(generic);
    expect(first.nodeNames).toEqual(names);
    expect(first.pod?.metadata?.annotations.note).toBe('a "NodeNames":["evil"]} at the end');
    const second = parseExtenderJson(FilterRequestSchema, body(pod("2")));
    expect(second.pod?.metadata?.uid).toBe("2");
    expect(second.nodeNames).toBe(first.nodeNames);
    const other = parseExtenderJson(PrioritizeRequestSchema, body(pod("3"), names.slice(1)));
    expect(other.nodeNames).toEqual(names.slice(1));
  });

  it("leaves bodies of other shapes to the generic path, errors included", () => {
    const nested = JSON.stringify({
      Pod: { metadata: { name: "p" } },
      NodeNames: null,
      x: { NodeNames: ["a"] },
    });
    expect(parseExtenderJson(FilterRequestSchema, nested).nodeNames).toEqual([]);
    expect(() => parseExtenderJson(FilterRequestSchema, body(pod("4"), [1, 2]))).toThrow(ConnectError);
    expect(() => parseExtenderJson(FilterRequestSchema, '{"Pod":{,"NodeNames":["a"]}')).toThrow(
      /malformed JSON/,
    );
  });
});

describe("toExtenderJson", () => {
  it("writes ExtenderFilterResult in PascalCase, with NodeNames never null", () => {
    const none = toExtenderJson(FilterResponseSchema, create(FilterResponseSchema, {}));
    expect(none).toEqual({ NodeNames: [], FailedNodes: {}, FailedAndUnresolvableNodes: {}, Error: "" });
    const some = toExtenderJson(
      FilterResponseSchema,
      create(FilterResponseSchema, {
        nodeNames: ["gpu-node-1"],
        failedNodes: { "gpu-node-2": "2 GPUs requested, 1 free" },
        failedAndUnresolvableNodes: { "gpu-node-3": "GPU model A10 not accepted" },
      }),
    );
    expect(JSON.stringify(some)).toBe(
      '{"NodeNames":["gpu-node-1"],"FailedNodes":{"gpu-node-2":"2 GPUs requested, 1 free"},' +
        '"FailedAndUnresolvableNodes":{"gpu-node-3":"GPU model A10 not accepted"},"Error":""}',
    );
  });

  it("writes the full-mode node list that kube-scheduler reads back by name", () => {
    const out = toExtenderJson(
      FilterResponseSchema,
      create(FilterResponseSchema, {
        nodes: { items: [{ metadata: { name: "gpu-node-1" } }] },
        nodeNames: ["gpu-node-1"],
      }),
    );
    expect(out).toMatchObject({
      Nodes: { items: [{ metadata: { name: "gpu-node-1" } }] },
      NodeNames: ["gpu-node-1"],
    });
  });

  it("writes the prioritize reply as a bare HostPriorityList array, zero scores included", () => {
    const out = toExtenderJson(
      PrioritizeResponseSchema,
      create(PrioritizeResponseSchema, {
        hostPriorities: [
          { host: "a", score: 10 },
          { host: "b", score: 0 },
        ],
      }),
    );
    expect(JSON.stringify(out)).toBe('[{"Host":"a","Score":10},{"Host":"b","Score":0}]');
  });

  it("writes ExtenderPreemptionResult in PascalCase", () => {
    const out = toExtenderJson(
      PreemptResponseSchema,
      create(PreemptResponseSchema, {
        nodeNameToMetaVictims: { n1: { pods: [{ uid: "v1" }], numPdbViolations: 0 } },
      }),
    );
    expect(out).toEqual({ NodeNameToMetaVictims: { n1: { Pods: [{ UID: "v1" }], NumPDBViolations: 0 } } });
  });
});

describe("the fast JSON writer", () => {
  it("writes plain init objects exactly as toJson writes the messages", () => {
    const seededNames = Array.from({ length: 50 }, (_, i) => `node-${i}`);
    const filter = {
      nodeNames: seededNames.slice(0, 20),
      failedNodes: { "node-30": "needs 2 GPUs" },
      failedAndUnresolvableNodes: {},
      nodes: { items: [{ metadata: { name: "node-1", labels: { a: "b" } } }] },
    };
    expect(toExtenderJson(FilterResponseSchema, filter)).toEqual(
      toJson(FilterResponseSchema, create(FilterResponseSchema, filter), { alwaysEmitImplicit: true }),
    );
    const prioritize = { hostPriorities: seededNames.map((host, i) => ({ host, score: i % 11 })) };
    expect(toExtenderJson(PrioritizeResponseSchema, prioritize)).toEqual(
      (
        toJson(PrioritizeResponseSchema, create(PrioritizeResponseSchema, prioritize), {
          alwaysEmitImplicit: true,
        }) as {
          HostPriorities: unknown[];
        }
      ).HostPriorities,
    );
    const cacheMode = {
      nodeNames: ["a", "b"],
      failedNodes: { c: 'needs "2"' },
      failedAndUnresolvableNodes: { d: "model" },
    };
    expect(filterReplyText(cacheMode)).toBe(JSON.stringify(toExtenderJson(FilterResponseSchema, cacheMode)));
    expect(filterReplyText({})).toBe(JSON.stringify(toExtenderJson(FilterResponseSchema, {})));
    expect(prioritizeReplyText(prioritize.hostPriorities)).toBe(
      JSON.stringify(toExtenderJson(PrioritizeResponseSchema, prioritize)),
    );
    expect(JSON.parse(prioritizeReplyText([{ host: 'we"ird\\name', score: 3 }]))).toEqual([
      { Host: 'we"ird\\name', Score: 3 },
    ]);
    const preempt = { nodeNameToMetaVictims: { n1: { pods: [{ uid: "v1" }], numPdbViolations: 2 } } };
    expect(toExtenderJson(PreemptResponseSchema, preempt)).toEqual(
      toJson(PreemptResponseSchema, create(PreemptResponseSchema, preempt), { alwaysEmitImplicit: true }),
    );
    expect(toExtenderJson(FilterResponseSchema, {})).toEqual({
      NodeNames: [],
      FailedNodes: {},
      FailedAndUnresolvableNodes: {},
      Error: "",
    });
  });
});

/**
 * An oracle for the reader: any extender message, written by protobuf-es in the wire form, then re-cased
 * and re-spaced the ways Go's encoding/json accepts (any case for struct keys, any whitespace), reads back
 * as the same message, through the text path and the parsed-object path.
 */
describe("parseExtenderJson against protobuf-es's own JSON (seeded)", () => {
  const rng = createRng(26);
  const int = (n: number) => Math.floor(rng() * n);
  const reCase = (key: string) =>
    [...key].map((c) => (rng() < 0.5 ? c.toLowerCase() : c.toUpperCase())).join("");
  const SPACES = [" ", "\n", "\r\n", "\t", "  "];
  const space = () => (rng() < 0.5 ? "" : SPACES[int(SPACES.length)]);

  /** Re-cases the keys of extender structs (PascalCase keys) at every depth; Kubernetes objects keep theirs. */
  function reCaseKeys(value: unknown): unknown {
    if (Array.isArray(value)) return value.map(reCaseKeys);
    if (value === null || typeof value !== "object") return value;
    return Object.fromEntries(
      Object.entries(value).map(([k, v]) =>
        /^[A-Z]/.test(k) ? [reCase(k), reCaseKeys(v)] : [k, k === "metadata" ? v : reCaseKeys(v)],
      ),
    );
  }
  /** JSON text with random whitespace between tokens (after every structural character and at the end). */
  function spaced(value: unknown): string {
    return `${JSON.stringify(value).replace(/([{}[\]:,])(?=(?:[^"\\]|\\.|"(?:[^"\\]|\\.)*")*$)/g, (m) => `${space()}${m}${space()}`)}${space()}`;
  }
  const names = () => Array.from({ length: int(6) }, () => `node-${int(50)}`);
  const pod = () => ({ metadata: { name: `p-${int(99)}`, uid: `u-${int(99)}`, labels: { a: "b" } } });
  const victims = () => ({
    pods: Array.from({ length: 1 + int(3) }, () => ({ uid: `v-${int(99)}` })),
    numPdbViolations: int(3),
  });

  const cases: [string, () => [DescMessage, unknown]][] = [
    ["FilterRequest", () => [FilterRequestSchema, { pod: pod(), nodeNames: names() }]],
    ["PrioritizeRequest", () => [PrioritizeRequestSchema, { pod: pod(), nodeNames: names() }]],
    [
      "PreemptRequest",
      () => [
        PreemptRequestSchema,
        { pod: pod(), nodeNameToMetaVictims: Object.fromEntries(names().map((n) => [n, victims()])) },
      ],
    ],
    [
      "BindRequest",
      () => [BindRequestSchema, { podName: "p", podNamespace: "ns", podUid: `u-${int(9)}`, node: "n" }],
    ],
  ];

  it.each(cases)("%s: 200 random messages, re-cased and re-spaced, read back equal", (_, make) => {
    for (let i = 0; i < 200; i++) {
      const [schema, init] = make();
      const expected = create(schema, init as never);
      const wire = reCaseKeys(toJson(schema, expected));
      const text = spaced(wire);
      expect(parseExtenderJson(schema, text), text).toEqual(expected);
      expect(parseExtenderJson(schema, wire as JsonValue), text).toEqual(expected);
    }
  });

  it("takes the repeated-list shortcut whatever whitespace kube-scheduler's encoder puts around it", () => {
    const list = ["gpu-a", "gpu-b", "gpu-c"];
    for (const ws of [" ", "\n", "\r\n", "\t", " \t\r\n"]) {
      const text = `{"Pod":{"metadata":{"name":"p"}},${ws}"NodeNames"${ws}:${ws}["gpu-a",${ws}"gpu-b","gpu-c"]${ws}}${ws}`;
      const first = parseExtenderJson(FilterRequestSchema, text);
      expect(first.nodeNames).toEqual(list);
      expect(first.pod?.metadata?.name).toBe("p");
      // The same list's text again: the array parsed the first time is handed over, not a new one.
      expect(parseExtenderJson(FilterRequestSchema, text).nodeNames).toBe(first.nodeNames);
    }
  });

  it("reads a trailing list only when it is NodeNames, in a message that has NodeNames", () => {
    // Same length as "NodeNames": the key itself decides.
    expect(
      parseExtenderJson(FilterRequestSchema, '{"Pod":{"metadata":{"name":"p"}},"NodeNamez":["a"]}'),
    ).toEqual(create(FilterRequestSchema, { pod: { metadata: { name: "p" } } }));
    expect(parseExtenderJson(BindRequestSchema, '{"PodName":"p","Node":"n","NodeNames":["x"]}')).toEqual(
      create(BindRequestSchema, { podName: "p", node: "n" }),
    );
  });

  it.each([
    ["a colon missing before a trailing list", '{"Pod":{},"NodeNames",["a"]}', /malformed JSON/],
    ["a trailing list that is not JSON", '{"Pod":{},"NodeNames":[a]}', /malformed JSON/],
    ["the closing brace missing", '{"Pod":{},"NodeNames":["a"]', /malformed JSON/],
    ["a bracket instead of the closing brace", '{"Pod":{},"NodeNames":["a"]]', /malformed JSON/],
    [
      "a trailing list mixing strings and numbers",
      '{"Pod":{},"NodeNames":["a",1]}',
      /NodeNames must be a list of strings/,
    ],
    ["a JSON string", '"Pod"', /expected a JSON object/],
    ["a JSON number", "42", /expected a JSON object/],
    [
      "a key given twice deep inside",
      '{"NodeNameToMetaVictims":{"n1":{"Pods":[{"UID":"a","Uid":"b"}]}}}',
      /^PreemptRequest\.NodeNameToMetaVictims\["n1"\]\.Pods\[0\]: duplicate key "Uid" for field UID$/,
    ],
  ])("rejects %s with InvalidArgument", (_, body, message) => {
    const schema = body.includes("Victims") ? PreemptRequestSchema : FilterRequestSchema;
    let error: unknown;
    try {
      parseExtenderJson(schema, body);
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(ConnectError);
    expect((error as ConnectError).code).toBe(Code.InvalidArgument);
    expect((error as ConnectError).rawMessage).toMatch(message);
  });

  it("leaves the keys of embedded Kubernetes objects as they are (Kubernetes JSON is case-sensitive)", () => {
    const args = parseExtenderJson(FilterRequestSchema, { Pod: { Metadata: { name: "p" } }, NodeNames: [] });
    expect(args.pod?.metadata).toBeUndefined();
  });

  it("writes what it is given about hosts with no name, no list, or names that need escaping", () => {
    expect(toExtenderJson(PrioritizeResponseSchema, {})).toEqual([]);
    expect(toExtenderJson(BindResponseSchema, {})).toEqual({ Error: "" });
    expect(toExtenderJson(BindResponseSchema, { error: "gone" })).toEqual({ Error: "gone" });
    expect(prioritizeReplyText([{ score: 1 }])).toBe('[{"Host":"","Score":1}]');
    for (const host of ['"', '"\n\\', "\u0000", "Ab"])
      expect(JSON.parse(prioritizeReplyText([{ host, score: 2 }]))).toEqual([{ Host: host, Score: 2 }]);
  });
});
