/**
 * The key store on a Kubernetes Secret volume, updated the way the kubelet updates one (its AtomicWriter):
 * the files are symlinks through `..data` to a timestamped directory, and an update writes a new
 * directory and renames a new `..data` symlink over the old one. The store must see the new keys.
 */
import { mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, expect, it } from "vitest";
import { stringify } from "yaml";
import { type ApiKeyRecord, newKey, openKeyStore } from "../../../server/tenants/key-store.js";

const dir = mkdtempSync(join(tmpdir(), "kinfer-secret-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let version = 0;
/** Writes the Secret's content as the kubelet would. */
function writeSecret(keys: ApiKeyRecord[]) {
  const data = `..2026_11_29_${version++}`;
  mkdirSync(join(dir, data));
  writeFileSync(join(dir, data, "keys.yaml"), stringify({ keys }));
  symlinkSync(data, join(dir, "..data_tmp"));
  renameSync(join(dir, "..data_tmp"), join(dir, "..data"));
}

it("sees keys added to a Secret volume, and stops accepting removed ones", async () => {
  const first = newKey({ tenant: "a" });
  writeSecret([first.record]);
  symlinkSync(join("..data", "keys.yaml"), join(dir, "keys.yaml"));
  const store = openKeyStore({ file: join(dir, "keys.yaml") });
  try {
    expect(store.authenticate(first.secret)?.tenant).toBe("a");
    const second = newKey({ tenant: "b" });
    writeSecret([second.record]); // the Secret now holds only the second key
    const until = Date.now() + 5000;
    while (store.authenticate(second.secret) === undefined && Date.now() < until)
      await new Promise((r) => setTimeout(r, 20));
    expect(store.authenticate(second.secret)?.tenant).toBe("b");
    expect(store.authenticate(first.secret)).toBeUndefined();
    expect(store.list().map((k) => k.tenant)).toEqual(["b"]);
  } finally {
    store.close();
  }
});
