/**
 * bin/kinfer-scheduler as its own process (the production build, as a cluster runs it), with its
 * command-line flags: --cluster (deploy/local/cluster.yaml, no Kubernetes), --policy, --filter-returns,
 * --port and a read-only --ops-port. Filter, Prioritize and Bind over gRPC (grpc-js, the ts-proto client)
 * and over Connect; the ops port answers Explain but refuses the verbs that change state; bad flags are
 * refused by name with status 2; SIGTERM stops it.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { Code, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { credentials, Metadata } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SchedulingService } from "../../gen/es/kinfer/scheduling/v1/scheduling_pb.js";
import {
  FilterRequest,
  type FilterResponse,
  PrioritizeRequest,
  SchedulingServiceClient,
} from "../../gen/grpc-js/kinfer/scheduling/v1/scheduling.js";
import { requireBuild } from "../k8s/cluster/images.js";

const root = new URL("../..", import.meta.url).pathname;
const bin = `${root}bin/kinfer-scheduler`;
let child: ChildProcess;
let url: string;
let opsUrl: string;
let output = "";

/** A pod asking for whole GPUs, as the Pod message (the Kubernetes object's JSON shape). */
const pod = (name: string, gpus: number) => ({
  metadata: { name, namespace: "default", uid: `uid-${name}` },
  spec: { containers: [{ name: "c", resources: { limits: { "nvidia.com/gpu": String(gpus) } } }] },
});
const NODES = ["h100-a", "h100-b", "a100-a", "a100-b", "l4-a"];

function run(args: string[]): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const p = spawn(bin, args, { stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    p.stderr?.on("data", (d) => {
      stderr += d;
    });
    p.on("exit", (code) => resolve({ code, stderr }));
  });
}

beforeAll(async () => {
  requireBuild();
  child = spawn(
    bin,
    [
      "--cluster",
      `${root}deploy/local/cluster.yaml`,
      "--port",
      "0",
      "--ops-host",
      "127.0.0.1",
      "--ops-port",
      "0",
      "--policy",
      "binpack",
      "--filter-returns",
      "all",
      "--log-format",
      "json",
    ],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  child.stderr?.on("data", (d) => {
    output += d;
  });
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`kinfer-scheduler did not start:\n${output}`)), 30_000);
    createInterface({ input: child.stdout as NodeJS.ReadableStream }).on("line", (line) => {
      output += `${line}\n`;
      const ready = /"msg":"ready"/.test(line)
        ? (JSON.parse(line) as { url: string; opsUrl: string })
        : undefined;
      if (ready !== undefined) opsUrl = ready.opsUrl;
      const at = /^kinfer-scheduler: ready at (\S+)$/.exec(line)?.[1];
      if (at !== undefined) url = at;
      // Both lines, in whichever order they come (the JSON log is written asynchronously).
      if (url !== undefined && opsUrl !== undefined) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
}, 60_000);

afterAll(() => {
  child?.kill("SIGTERM");
});

describe("kinfer-scheduler, the program", () => {
  // The policy the flag names (--policy binpack) is read back by the Explain test below.
  it("Filter and Prioritize over gRPC (grpc-js): --filter-returns all, every fitting node scored", async () => {
    const client = new SchedulingServiceClient(new URL(url).host, credentials.createInsecure());
    try {
      const filter = await new Promise<FilterResponse>((resolve, reject) =>
        client.filter(
          FilterRequest.fromPartial({ pod: pod("grpc-pod", 1), nodeNames: NODES }),
          new Metadata(),
          (err, res) => (err ? reject(err) : resolve(res as FilterResponse)),
        ),
      );
      // Every node with a free GPU fits (all of them, not only the policy's pick).
      expect(filter.nodeNames.length).toBeGreaterThan(1);
      expect(filter.error).toBe("");
      const scores = await new Promise<{ node: string; score: number }[]>((resolve, reject) =>
        client.prioritize(
          PrioritizeRequest.fromPartial({ pod: pod("grpc-pod", 1), nodeNames: filter.nodeNames }),
          new Metadata(),
          (err, res) =>
            err
              ? reject(err)
              : resolve((res?.hostPriorities ?? []).map((h) => ({ node: h.host, score: h.score }))),
        ),
      );
      expect(scores.map((s) => s.node).sort()).toEqual([...filter.nodeNames].sort());
      // The nodes are told apart (the local cluster has pods running already), not all given one score.
      expect(new Set(scores.map((s) => s.score)).size).toBeGreaterThan(1);
    } finally {
      client.close();
    }
  });

  it("Bind over Connect records the devices; Explain then shows them used, under the policy it was given", async () => {
    const client = createClient(
      SchedulingService,
      createConnectTransport({ baseUrl: url, httpVersion: "2" }),
    );
    const before = await client.explain({ pod: pod("connect-pod", 2) });
    expect(before.policy).toBe("binpack");
    const node = before.chosenNode;
    expect(node).not.toBe("");
    const freeOn = (e: typeof before) =>
      (e.nodes.find((n) => n.node === node)?.freeGpuMilli ?? []).reduce((a, b) => a + b, 0);
    const filter = await client.filter({ pod: pod("connect-pod", 2), nodeNames: NODES });
    expect(filter.nodeNames).toContain(node);
    const bound = await client.bind({
      podName: "connect-pod",
      podNamespace: "default",
      podUid: "uid-connect-pod",
      node,
    });
    expect(bound.error).toBe("");
    // The node's free GPU shares went down by the pod's two GPUs.
    const after = await client.explain({ pod: pod("another", 1) });
    expect(freeOn(after)).toBe(freeOn(before) - 2000);
  });

  it("the read-only ops port explains but refuses Filter, Bind and Preempt", async () => {
    const ops = createClient(
      SchedulingService,
      createConnectTransport({ baseUrl: opsUrl, httpVersion: "1.1" }),
    );
    expect((await ops.explain({ pod: pod("ops-pod", 1) })).nodes.length).toBe(NODES.length);
    await expect(ops.filter({ pod: pod("ops-pod", 1), nodeNames: NODES })).rejects.toMatchObject({
      code: Code.Unimplemented,
    });
    await expect(
      ops.bind({ podName: "x", podNamespace: "default", podUid: "x", node: "h100-a" }),
    ).rejects.toMatchObject({ code: Code.Unimplemented });
    await expect(ops.preempt({ pod: pod("ops-pod", 1) })).rejects.toMatchObject({ code: Code.Unimplemented });
    const res = await fetch(`${opsUrl}/scheduler/bind`, { method: "POST", body: "{}" });
    expect(res.status).toBeGreaterThanOrEqual(400);
    expect((await fetch(`${opsUrl}/metrics`)).status).toBe(200);
  });

  it("bad flags are refused by name, with status 2", async () => {
    for (const [args, message] of [
      [["--policy", "nope"], /--policy: unknown policy "nope"/],
      [["--filter-returns", "some"], /--filter-returns/],
      [["--port", "70000"], /--port: not a port/],
      [["--cluster", "x.yaml", "--kubeconfig", "y"], /--cluster runs without Kubernetes/],
      [["--log-level", "loud"], /--log-level/],
      [["--unknown"], /unknown/i],
    ] as const) {
      const r = await run([...args]);
      expect(r.code, args.join(" ")).toBe(2);
      expect(r.stderr).toMatch(message);
    }
  });

  it("SIGTERM stops it", async () => {
    const exited = new Promise<number | null>((resolve) => child.once("exit", resolve));
    child.kill("SIGTERM");
    expect(await exited).toBe(0);
  });
});
