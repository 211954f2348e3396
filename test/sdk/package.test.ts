/**
 * @kinfer/sdk as users get it: built, packed with `npm pack`, installed from the tarball into an empty
 * project (no workspace links), and used from ESM and CommonJS against a live gateway with simulated
 * replicas. Every code example in sdk/README.md runs too.
 */
import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Harness, startHarness } from "../helpers/gateway-harness.js";
import { requireSdkBuild } from "../helpers/sdk-build.js";

const run = promisify(execFile);
const sdk = new URL("../../sdk", import.meta.url).pathname;
const rootDir = new URL("../..", import.meta.url).pathname;
const versions = JSON.parse(readFileSync(join(rootDir, "package.json"), "utf8")).dependencies as Record<
  string,
  string
>;
const ADMIN_TOKEN = "sdk-readme-admin-token-0123456789";
let project: string;
let tarball: string;
let h: Harness;

beforeAll(async () => {
  h = await startHarness({
    models: { "llama-3-8b": { stable: 1, canary: 1 } },
    weights: { "llama-3-8b": { stable: 100, canary: 0 } },
    config: { admin: { host: "127.0.0.1", port: 0, token: ADMIN_TOKEN } },
  });
  requireSdkBuild();
  project = mkdtempSync(join(tmpdir(), "kinfer-sdk-user-"));
  const { stdout } = await run("npm", ["pack", "--json", "--pack-destination", project], { cwd: sdk });
  const packed = JSON.parse(stdout)[0] as { filename: string; files: { path: string }[] };
  tarball = join(project, packed.filename);
  writeFileSync(join(project, "files.json"), JSON.stringify(packed.files.map((f) => f.path)));
  writeFileSync(
    join(project, "package.json"),
    JSON.stringify({ name: "user", private: true, type: "module" }),
  );
  await run(
    "npm",
    [
      "install",
      "--no-audit",
      "--no-fund",
      "--prefer-offline",
      tarball,
      `@bufbuild/protobuf@${versions["@bufbuild/protobuf"]}`,
      `@connectrpc/connect@${versions["@connectrpc/connect"]}`,
      `@connectrpc/connect-node@${versions["@connectrpc/connect-node"]}`,
      `@grpc/grpc-js@${versions["@grpc/grpc-js"]}`,
    ],
    { cwd: project, timeout: 180_000 },
  );
}, 240_000);

afterAll(async () => {
  await h?.close();
  if (project) rmSync(project, { recursive: true, force: true });
});

const node = (file: string) =>
  run(process.execPath, [file], {
    cwd: project,
    env: {
      ...process.env,
      KINFER_URL: h.url,
      KINFER_ADMIN_URL: h.gateway.adminUrl as string,
      KINFER_ADMIN_TOKEN: ADMIN_TOKEN,
    },
    timeout: 30_000,
  });

describe("@kinfer/sdk from its tarball", () => {
  it("holds only the build, README, CHANGELOG, LICENSE and package.json", () => {
    const files = JSON.parse(readFileSync(join(project, "files.json"), "utf8")) as string[];
    expect(files.every((f) => /^(dist\/|README\.md$|CHANGELOG\.md$|LICENSE$|package\.json$)/.test(f))).toBe(
      true,
    );
    expect(files).toContain("dist/esm/sdk/src/index.js");
    expect(files).toContain("dist/cjs/sdk/src/index.js");
    expect(files).toContain("dist/esm/sdk/src/index.d.ts");
    // The generated code comes from the repository's one gen/ tree, compiled into the package.
    expect(files).toContain("dist/esm/gen/es/kinfer/inference/v1/inference_pb.js");
    expect(files).toContain("dist/cjs/gen/grpc-js/kinfer/inference/v1/inference.js");
  });

  it("passes publint and attw (types resolve for node10, node16 ESM and CJS, and bundlers)", async () => {
    const bin = join(rootDir, "node_modules/.bin");
    await run(join(bin, "publint"), ["--strict"], { cwd: sdk });
    // attw exits non-zero on any problem (run rejects then).
    const { stdout } = await run(join(bin, "attw"), ["--pack", "."], { cwd: sdk });
    expect(stdout).toMatch(/No problems found/);
  });

  it("streams and collects from ESM", async () => {
    writeFileSync(
      join(project, "esm.mjs"),
      `import { createKinferClient, KinferError } from "@kinfer/sdk";
import { createNodeTransport } from "@kinfer/sdk/node";
const kinfer = createKinferClient({ transport: createNodeTransport({ baseUrl: process.env.KINFER_URL }) });
const { text, start, finish } = await kinfer.generate({ model: "llama-3-8b", prompt: "Hi", sampling: { maxTokens: 5 } }).collect();
const models = await kinfer.listModels();
let error;
try { await kinfer.generate({ model: "nope", prompt: "x" }).collect(); } catch (e) { error = e; }
console.log(JSON.stringify({ text, version: start.version, tokens: finish.usage.completionTokens, models: models.map((m) => m.name), error: error instanceof KinferError ? error.codeName : String(error) }));
`,
    );
    const out = JSON.parse((await node("esm.mjs")).stdout);
    expect(out).toMatchObject({ version: "stable", tokens: 5, models: ["llama-3-8b"], error: "NotFound" });
    expect(out.text.length).toBeGreaterThan(0);
  });

  it("gives grpc-js users the ts-proto clients (@kinfer/sdk/grpc-js) and a one-call client", async () => {
    writeFileSync(
      join(project, "grpcjs.mjs"),
      `import * as grpc from "@grpc/grpc-js";
import { GenerateRequest, InferenceServiceClient } from "@kinfer/sdk/grpc-js";
import { createNodeClient } from "@kinfer/sdk/node";
const client = new InferenceServiceClient(new URL(process.env.KINFER_URL).host, grpc.credentials.createInsecure());
const viaGrpcJs = await new Promise((resolve, reject) => {
  let text = "";
  client.generate(GenerateRequest.fromPartial({ model: "llama-3-8b", prompt: "Same", sampling: { maxTokens: 6, seed: 9n } }))
    .on("data", (r) => { if (r.event?.$case === "delta") text += r.event.delta.text; })
    .on("error", reject)
    .on("end", () => resolve(text));
});
client.close();
const viaSdk = await createNodeClient({ baseUrl: process.env.KINFER_URL, timeoutMs: 10000 })
  .generate({ model: "llama-3-8b", prompt: "Same", sampling: { maxTokens: 6, seed: 9n } }).collect();
console.log(JSON.stringify({ same: viaGrpcJs === viaSdk.text, length: viaSdk.text.length }));
`,
    );
    expect(JSON.parse((await node("grpcjs.mjs")).stdout)).toEqual({ same: true, length: expect.any(Number) });
  });

  it("works from CommonJS", async () => {
    writeFileSync(
      join(project, "cjs.cjs"),
      `const { createKinferClient } = require("@kinfer/sdk");
const { createNodeTransport } = require("@kinfer/sdk/node");
(async () => {
  const kinfer = createKinferClient({ transport: createNodeTransport({ baseUrl: process.env.KINFER_URL, protocol: "connect" }) });
  let n = 0;
  for await (const t of kinfer.generate({ model: "llama-3-8b", prompt: "Hi", sampling: { maxTokens: 4 } }).text()) n += t.length > 0 ? 1 : 0;
  console.log(n);
})();
`,
    );
    expect(Number((await node("cjs.cjs")).stdout.trim())).toBe(4);
  });

  it("runs every example of sdk/README.md", async () => {
    const readme = readFileSync(join(sdk, "README.md"), "utf8");
    const examples = [...readme.matchAll(/```js\n([\s\S]*?)```/g)].map((m) => m[1] as string);
    expect(examples.length).toBeGreaterThanOrEqual(3);
    const outputs: string[] = [];
    for (const [i, code] of examples.entries()) {
      writeFileSync(join(project, `readme-${i}.mjs`), code);
      outputs.push((await node(`readme-${i}.mjs`)).stdout);
    }
    expect(outputs[0]?.length).toBeGreaterThan(0); // streamed text
    expect(outputs[1]).toMatch(/ \d+\n$/); // text and token count
    expect(outputs[2]).toBe("NotFound false\nCanceled\n");
    expect(outputs[3]).toBe("llama-3-8b\n");
    expect(outputs[4]?.length).toBeGreaterThan(0);
    expect(outputs[5]).toBe("canary=10 stable=90\n");
  });
});
