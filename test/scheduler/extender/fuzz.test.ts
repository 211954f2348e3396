/**
 * The extender against hostile callers (seeded, so a failure replays): 5,000 fuzzed requests to every verb
 * over HTTP (random bytes, wrong types, huge and deep JSON, lowercase and PascalCase keys, forged Nodes)
 * and over gRPC. Every answer is an error of the caller's making or a success (never HTTP 500, never a
 * stack trace); request bodies built to make a regular expression backtrack are answered in linear time;
 * no request can resize or invent a node; fake filter calls hold at most maxHolds pods, and their holds
 * lapse; and the scheduler still places a real pod afterwards.
 */
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from "vitest";
import { createRng } from "../../../common/random.js";
import { SchedulingService } from "../../../gen/es/kinfer/scheduling/v1/scheduling_pb.js";
import { createClusterState } from "../../../scheduler/cluster/cluster-state.js";
import { type SchedulerServer, startSchedulerServer } from "../../../scheduler/scheduler-server.js";
import { waitFor } from "../../helpers/idle.js";
import { postJson } from "../../helpers/sse.js";

const HOLD_TTL_MS = 1500;
const MAX_HOLDS = 16;
const state = createClusterState();
const NODES = Array.from({ length: 20 }, (_, i) => `gpu-${i}`);
let server: SchedulerServer;

beforeAll(async () => {
  for (const name of NODES)
    state.upsertNode({
      name,
      model: "H100",
      cpuMilli: 96_000,
      memMiB: 1_000_000,
      gpus: 8,
      nvlinkDomainSize: 4,
      schedulable: true,
    });
  server = await startSchedulerServer({
    host: "127.0.0.1",
    port: 0,
    state,
    defaultPolicy: "fragmentation",
    filterReturns: "best",
    holds: { max: MAX_HOLDS, ttlMs: HOLD_TTL_MS },
    binder: { async bind() {} },
  });
});
afterAll(() => server.close());

const rng = createRng(20261130);
const int = (n: number) => Math.floor(rng() * n);
const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)] as T;
const HOSTILE: readonly unknown[] = [
  null,
  -1,
  0,
  2 ** 53,
  1e308,
  "",
  "\u0000",
  "x".repeat(5000),
  true,
  [],
  {},
  [null],
  { $ref: "#" },
  "../../etc/passwd",
];

/** A random well-formed pod, or one with a hostile value somewhere. */
function pod(i: number): unknown {
  const base = {
    metadata: {
      name: `p${i}`,
      namespace: "fuzz",
      uid: `fuzz-${i}`,
      annotations: { "kinfer.io/gpu-milli": String(int(1200)) },
    },
    spec: {
      containers: [
        {
          name: "c",
          resources: {
            limits: { "nvidia.com/gpu": String(int(10)) },
            requests: { cpu: `${int(100)}`, memory: "1Gi" },
          },
        },
      ],
    },
  };
  if (rng() < 0.5) return base;
  const paths = [
    (p: typeof base, v: unknown) => Object.assign(p.metadata, { annotations: v }),
    (p: typeof base, v: unknown) => Object.assign(p.metadata.annotations, { "kinfer.io/gpu-milli": v }),
    (p: typeof base, v: unknown) => Object.assign(p.spec, { containers: v }),
    (p: typeof base, v: unknown) => Object.assign(p.spec.containers[0] as object, { resources: v }),
    (p: typeof base, v: unknown) => Object.assign(p.metadata, { uid: v }),
  ];
  pick(paths)(base, pick(HOSTILE));
  return base;
}

function body(i: number): string {
  const kind = rng();
  if (kind < 0.1) return String.fromCharCode(...Array.from({ length: int(200) }, () => int(256)));
  if (kind < 0.15) return `{"Pod":${"[".repeat(5000)}${"]".repeat(5000)}}`;
  const key = (k: string) => (rng() < 0.3 ? k.toLowerCase() : k);
  const msg: Record<string, unknown> = {
    [key("Pod")]: pod(i),
    [key("NodeNames")]: rng() < 0.8 ? NODES.slice(0, 1 + int(NODES.length)) : pick(HOSTILE),
  };
  // A forged NodeList: bigger nodes than the cluster has, and nodes it does not have.
  if (rng() < 0.2)
    msg[key("Nodes")] = {
      items: [
        { metadata: { name: "gpu-0" }, status: { allocatable: { cpu: "9999", "nvidia.com/gpu": "64" } } },
        { metadata: { name: "forged" }, status: { allocatable: { "nvidia.com/gpu": "64" } } },
      ],
    };
  if (rng() < 0.2)
    Object.assign(msg, {
      PodName: pick(HOSTILE),
      PodUID: `fuzz-${int(i + 1)}`,
      Node: pick([...NODES, "forged", null]),
    });
  if (rng() < 0.1)
    Object.assign(msg, {
      NodeNameToMetaVictims: { "gpu-1": { Pods: [{ UID: `fuzz-${int(i + 1)}` }] }, forged: pick(HOSTILE) },
    });
  return JSON.stringify(msg);
}

describe("the extender against hostile callers", () => {
  it("5,000 fuzzed requests to every verb: never 500, never a stack trace", async () => {
    const answers = new Map<number, number>();
    for (let i = 0; i < 5000; i += 25) {
      await Promise.all(
        Array.from({ length: 25 }, async (_, j) => {
          const verb = pick(["filter", "prioritize", "bind", "preempt"]);
          const res = await postJson(`${server.url}/scheduler/${verb}`, body(i + j));
          const text = await res.text();
          answers.set(res.status, (answers.get(res.status) ?? 0) + 1);
          expect([200, 400, 413], `${verb}: ${res.status} ${text.slice(0, 200)}`).toContain(res.status);
          expect(text).not.toMatch(/ at .*\.(ts|js):\d+|node_modules|TypeError|RangeError/);
        }),
      );
    }
    expect(answers.get(200)).toBeGreaterThan(1000);
  }, 120_000);

  it("answers over gRPC too: hostile messages get typed errors", async () => {
    const client = createClient(SchedulingService, createGrpcTransport({ baseUrl: server.url }));
    for (let i = 0; i < 200; i++) {
      try {
        await client.filter({
          nodeNames: NODES,
          pod: {
            metadata: { uid: `g-${i}`, annotations: { "kinfer.io/gpu-milli": String(int(3000) - 1000) } },
          },
        });
        await client.explain({
          pod: { metadata: { annotations: { "kinfer.io/placement-policy": pick(["spread", "nope", ""]) } } },
        });
      } catch (err) {
        expect((err as { code: number }).code).toBe(3); // INVALID_ARGUMENT
      }
    }
  });

  it("no request resized or invented a node", () => {
    expect([...state.nodes.keys()].sort()).toEqual([...NODES].sort());
    for (const n of state.nodes.values()) {
      expect(n.cpuMilli).toBe(96_000);
      expect(n.free.length).toBe(8);
    }
  });

  it("bodies built to make a regular expression backtrack are answered in linear time", async () => {
    const normal = JSON.stringify({ Pod: pod(0), NodeNames: NODES });
    const t0 = performance.now();
    await postJson(`${server.url}/scheduler/filter`, normal);
    const baseline = performance.now() - t0;
    // ~370 KB of '"NodeNames":[' with no "]": a pattern like /"NodeNames"\s*:\s*(\[[^\]]*\])\s*\}\s*$/ scans
    // to the end of the body from every one of them (quadratic: seconds of a blocked event loop).
    const hostile = `{"Pod":{},${'"NodeNames":['.repeat(28_000)}`;
    const t1 = performance.now();
    const res = await postJson(`${server.url}/scheduler/filter`, hostile);
    const took = performance.now() - t1;
    expect(res.status).toBeLessThan(500);
    expect(took).toBeLessThan(Math.max(500, baseline * 50));
  });

  it("fake filter calls hold at most maxHolds pods, the holds lapse, and a real pod is placed", async () => {
    // A cluster of its own (the fuzzing above bound pods on the other).
    const state = createClusterState();
    for (const name of NODES)
      state.upsertNode({
        name,
        model: "H100",
        cpuMilli: 96_000,
        memMiB: 1_000_000,
        gpus: 8,
        nvlinkDomainSize: 4,
        schedulable: true,
      });
    const server = await startSchedulerServer({
      host: "127.0.0.1",
      port: 0,
      state,
      defaultPolicy: "fragmentation",
      filterReturns: "best",
      holds: { max: MAX_HOLDS, ttlMs: HOLD_TTL_MS },
    });
    onTestFinished(() => server.close());
    for (let i = 0; i < 200; i++) {
      const r = await postJson(`${server.url}/scheduler/filter`, {
        Pod: {
          metadata: { name: `fake-${i}`, uid: `fake-${i}` },
          spec: { containers: [{ name: "c", resources: { limits: { "nvidia.com/gpu": "4" } } }] },
        },
        NodeNames: NODES,
      });
      expect(r.status).toBe(200);
    }
    expect(server.service.holds).toBe(MAX_HOLDS);
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    expect(metrics).toMatch(/kinfer_scheduler_holds_refused_total \d+/);
    // 16 NVLink domains of 40 held: a real pod still finds room.
    const real = (await (
      await postJson(`${server.url}/scheduler/filter`, {
        Pod: {
          metadata: { name: "real", uid: "real" },
          spec: { containers: [{ name: "c", resources: { limits: { "nvidia.com/gpu": "4" } } }] },
        },
        NodeNames: NODES,
      })
    ).json()) as { NodeNames: string[] };
    expect(real.NodeNames).toHaveLength(1);
    await waitFor(() => server.service.holds === 0, "the holds to lapse", HOLD_TTL_MS + 3000);
    await waitFor(
      () => [...state.nodes.values()].every((n) => n.freeMilli === 8000),
      "the held GPUs to be free",
      3000,
    );
  });
});
