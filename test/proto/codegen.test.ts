/**
 * Guards on the contracts and the committed generated code: buf lint (STANDARD + COMMENTS) and buf format
 * are clean, `buf generate` reproduces gen/ exactly, and nothing in proto/ breaks the published contract
 * (buf breaking, FILE rules) against test/proto/contract-baseline.binpb, an image of proto/ committed with
 * the repository (so the check holds in a shallow clone too; `npm run proto:baseline` renews it when a
 * breaking change is intended and announced), and against the previous commit when there is one.
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";

const root = new URL("../..", import.meta.url).pathname;
const bin = join(root, "node_modules", ".bin");
const env = { ...process.env, PATH: `${bin}:${process.env.PATH ?? ""}` };

function buf(...args: string[]) {
  return spawnSync(join(bin, "buf"), args, { cwd: root, env, encoding: "utf8" });
}

function listFiles(dir: string): string[] {
  return readdirSync(dir, { recursive: true, encoding: "utf8" })
    .filter((f) => statSync(join(dir, f)).isFile())
    .sort();
}

function gitHasParentWithProto(): boolean {
  const r = spawnSync("git", ["cat-file", "-e", "HEAD~1:proto"], { cwd: root });
  return r.status === 0;
}

describe("contracts", () => {
  const out = mkdtempSync(join(tmpdir(), "kinfer-gen-"));
  afterAll(() => rmSync(out, { recursive: true, force: true }));

  it("pass buf lint", () => {
    const r = buf("lint");
    expect(r.stdout + r.stderr).toBe("");
    expect(r.status).toBe(0);
  });

  it("are formatted with buf format", () => {
    const r = buf("format", "--diff", "--exit-code");
    expect(r.stdout).toBe("");
    expect(r.status).toBe(0);
  });

  it("regenerate to exactly the committed gen/ (the only generated tree)", () => {
    const r = buf("generate", "--output", out);
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    for (const dir of ["gen"]) {
      const committed = join(root, dir);
      const fresh = join(out, dir);
      expect(listFiles(fresh)).toEqual(listFiles(committed));
      for (const file of listFiles(fresh)) {
        const same = readFileSync(join(fresh, file), "utf8") === readFileSync(join(committed, file), "utf8");
        expect(same, `${dir}/${file} is stale: run npm run generate`).toBe(true);
      }
    }
  });

  it("do not break the published contract (buf breaking, FILE, against the committed baseline)", () => {
    const r = buf("breaking", "--against", "test/proto/contract-baseline.binpb");
    expect(r.stdout + r.stderr).toBe("");
    expect(r.status).toBe(0);
  });

  it("the baseline check fails on a breaking change (a field renumbered)", () => {
    const dir = mkdtempSync(join(tmpdir(), "kinfer-breaking-"));
    try {
      spawnSync("cp", ["-r", join(root, "proto"), join(root, "buf.yaml"), dir]);
      const file = join(dir, "proto/kinfer/inference/v1/inference.proto");
      const text = readFileSync(file, "utf8");
      writeFileSync(file, text.replace("string model = 1;", "string model = 99;"));
      const r = spawnSync(
        join(bin, "buf"),
        ["breaking", "--against", join(root, "test/proto/contract-baseline.binpb")],
        {
          cwd: dir,
          env,
          encoding: "utf8",
        },
      );
      expect(r.status).not.toBe(0);
      expect(r.stdout + r.stderr).toMatch(/model/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("do not break the previous commit (buf breaking, FILE), when the clone has one", () => {
    if (!gitHasParentWithProto()) {
      console.log("no previous commit with proto/ (a shallow clone): checked against the baseline only");
      return;
    }
    const r = buf("breaking", "--against", ".git#ref=HEAD~1");
    expect(r.stdout + r.stderr).toBe("");
    expect(r.status).toBe(0);
  });
});
