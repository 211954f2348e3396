/**
 * The control state in a local file (YAML), for `npm start` and any gateway without a cluster: kept across
 * restarts, shared by gateways on one machine that name the same file, watched so that a change by one
 * (or by hand) reaches the others.
 *
 * Each model's entry carries a version, a counter. A change is a read-modify-write of the whole file under
 * a lock file (`<file>.lock`, created exclusively; one left behind by a crashed process is taken over after
 * LOCK_STALE_MS), written to a temporary file and renamed over the old one, so readers see the old file or
 * the new one, never half of one. A file that does not parse is reported and the state in force is kept.
 */
import { mkdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { parse, stringify } from "yaml";
import { z } from "zod";
import { type FileWatch, watchFile } from "../../common/fs/watch-file.js";
import {
  type ControlStore,
  checkControl,
  conflictError,
  createListeners,
  EMPTY_CONTROL,
  modelControlSchema,
  unavailableError,
  type VersionedControl,
} from "./control-state.js";

/** A lock older than this was left by a process that died holding it. */
const LOCK_STALE_MS = 10_000;
/** How long a change waits for another process's lock before failing with UNAVAILABLE. */
const LOCK_WAIT_MS = 5000;

const fileSchema = z
  .object({
    models: z
      .record(z.string().min(1).max(256), modelControlSchema.extend({ version: z.number().int().positive() }))
      .default({}),
  })
  .strict();

export interface FileControlStoreOptions {
  file: string;
  /** A file that cannot be read or parsed (the state in force is kept). */
  onError?: (err: Error) => void;
}

function readState(file: string): Map<string, VersionedControl> {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return new Map();
    throw err;
  }
  const parsed = fileSchema.safeParse(parse(text) ?? {});
  if (!parsed.success) throw new Error(`${file}: ${z.prettifyError(parsed.error)}`);
  return new Map(
    Object.entries(parsed.data.models).map(([model, { version, ...control }]) => [
      model,
      { control, version: String(version) },
    ]),
  );
}

function writeState(file: string, models: ReadonlyMap<string, VersionedControl>): void {
  const body = {
    models: Object.fromEntries(
      [...models].map(([model, { control, version }]) => [model, { version: Number(version), ...control }]),
    ),
  };
  const temp = `${file}.${process.pid}.tmp`;
  writeFileSync(
    temp,
    `# kinfer gateway control state: written by the admin API (server/control/file-control-store.ts)\n${stringify(body)}`,
  );
  renameSync(temp, file);
}

async function withLock<T>(file: string, fn: () => T): Promise<T> {
  const lock = `${file}.lock`;
  const until = Date.now() + LOCK_WAIT_MS;
  for (;;) {
    try {
      writeFileSync(lock, String(process.pid), { flag: "wx" });
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      try {
        if (Date.now() - statSync(lock).mtimeMs > LOCK_STALE_MS) rmSync(lock, { force: true });
      } catch {
        // Gone meanwhile: try again.
      }
      if (Date.now() > until) throw new Error(`${lock} is held by another process`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }
  try {
    return fn();
  } finally {
    rmSync(lock, { force: true });
  }
}

export function createFileControlStore(options: FileControlStoreOptions): ControlStore {
  const { file } = options;
  mkdirSync(dirname(file), { recursive: true });
  let models = readState(file); // a broken file at start is an error the operator must see
  const listeners = createListeners();
  const fingerprint = (m: ReadonlyMap<string, VersionedControl>) =>
    JSON.stringify([...m].map(([k, v]) => [k, v.version]));
  const reload = () => {
    try {
      const next = readState(file);
      if (fingerprint(next) === fingerprint(models)) return;
      models = next;
      listeners.emit();
    } catch (err) {
      options.onError?.(err as Error);
    }
  };
  const watch: FileWatch = watchFile(file, reload, options.onError);

  return {
    kind: "file",
    synced: Promise.resolve(),
    snapshot: () => models,
    async update(model, change, expectedVersion) {
      let written: VersionedControl;
      try {
        written = await withLock(file, () => {
          const stored = readState(file);
          const current = stored.get(model) ?? { control: EMPTY_CONTROL, version: "" };
          if (expectedVersion !== undefined && expectedVersion !== current.version)
            throw conflictError(
              model,
              `it is at version ${current.version || "(none)"}, not ${expectedVersion}`,
            );
          const next = {
            control: checkControl(model, change(current.control)),
            version: String(Number(current.version || 0) + 1),
          };
          stored.set(model, next);
          writeState(file, stored);
          models = stored;
          return next;
        });
      } catch (err) {
        if (err instanceof Error && err.name === "ConnectError") throw err;
        throw unavailableError("file", err);
      }
      listeners.emit();
      return written;
    },
    onChange: (l) => listeners.add(l),
    async close() {
      watch.close();
    },
  };
}
