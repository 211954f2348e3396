/**
 * Tenants' API keys, stored hashed, as a YAML list (`keys:`). Two stores: a file (`tenants.keysFile`: a
 * writable file in local use, or a Kubernetes Secret mounted read-only), reloaded when it changes (the
 * kubelet swaps a Secret's files atomically), and the Secret itself through the API (`tenants.keysSecret`,
 * secret-key-store.ts), which every gateway replica watches and the admin API's key calls write. A list
 * that fails validation is reported and the keys in force are kept.
 *
 * A secret is `kfr_` + 32 random bytes (base64url); only its SHA-256 is stored, with its first characters
 * to recognise it in a list. Lookups hash the presented secret and find the digest in a map: the time
 * taken does not depend on how much of a guess is right. Keys created or revoked through the admin API
 * are written back to the file (atomically: a temporary file, then a rename); when the file is read-only
 * (a Secret), those calls fail with FAILED_PRECONDITION and the keys are managed in the Secret instead
 * (`npm run keys` prints a new key's entry).
 */
import { createHash, randomBytes } from "node:crypto";
import { readFileSync, renameSync, writeFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { parse, stringify } from "yaml";
import { z } from "zod";
import { watchFile } from "../../common/fs/watch-file.js";

const SECRET_PREFIX = "kfr_";

const limitsSchema = z
  .object({
    /** Requests admitted per minute; 0 or unset: no limit. */
    requestsPerMinute: z.number().int().nonnegative().default(0),
    /** Prompt plus generated tokens per minute; 0 or unset: no limit. */
    tokensPerMinute: z.number().int().nonnegative().default(0),
    /** Streams open at once; 0 or unset: no limit. */
    maxConcurrentStreams: z.number().int().nonnegative().default(0),
  })
  .strict()
  .prefault({});

const keySchema = z
  .object({
    id: z.string().regex(/^[a-zA-Z0-9_.-]{1,64}$/, { error: "id: 1-64 letters, digits, '_', '.', '-'" }),
    tenant: z.string().min(1).max(128),
    /** SHA-256 of the secret, hex. */
    sha256: z.string().regex(/^[0-9a-f]{64}$/, { error: "sha256: 64 lowercase hex digits" }),
    secretPrefix: z.string().max(16).default(""),
    /** Models the key may use (see mayUse): a model's name, or one LoRA adapter's; empty: every model. */
    allowedModels: z.array(z.string().min(1)).default([]),
    limits: limitsSchema,
    /** The criticality of the key's requests that name none (flow control). Default standard. */
    priority: z.enum(["critical", "standard", "sheddable"]).default("standard"),
    /** The key's share of a saturated model, relative to other keys (flow control). Default 1. */
    weight: z.number().positive().max(1000).default(1),
    createdAt: z.iso.datetime().optional(),
    revokedAt: z.iso.datetime().optional(),
  })
  .strict();

const fileSchema = z.object({ keys: z.array(keySchema).default([]) }).strict();

export type ApiKeyRecord = z.infer<typeof keySchema>;
export type ApiKeyLimits = ApiKeyRecord["limits"];

export class KeyStoreError extends Error {
  override readonly name = "KeyStoreError";
  constructor(
    message: string,
    /**
     * "invalid": bad arguments; "read-only": the file cannot be written; "not-found": no such key;
     * "unavailable": the store cannot be written now (the apiserver is unreachable).
     */
    readonly kind: "invalid" | "read-only" | "not-found" | "unavailable",
  ) {
    super(message);
  }
}

export const hashSecret = (secret: string) => createHash("sha256").update(secret).digest("hex");

/** A new key: the record to store and, this once, its secret. */
export function newKey(init: {
  tenant: string;
  allowedModels?: readonly string[];
  limits?: Partial<ApiKeyLimits>;
  priority?: ApiKeyRecord["priority"];
  weight?: number;
  now?: Date;
}): { record: ApiKeyRecord; secret: string } {
  const secret = SECRET_PREFIX + randomBytes(32).toString("base64url");
  const parsed = keySchema.safeParse({
    id: `key_${randomBytes(6).toString("hex")}`,
    tenant: init.tenant,
    sha256: hashSecret(secret),
    secretPrefix: secret.slice(0, SECRET_PREFIX.length + 4),
    allowedModels: [...(init.allowedModels ?? [])],
    limits: init.limits ?? {},
    ...(init.priority !== undefined ? { priority: init.priority } : {}),
    ...(init.weight !== undefined ? { weight: init.weight } : {}),
    createdAt: (init.now ?? new Date()).toISOString(),
  });
  if (!parsed.success) throw new KeyStoreError(z.prettifyError(parsed.error), "invalid");
  return { record: parsed.data, secret };
}

/** Parses a keys file's text; throws KeyStoreError naming the file and the bad field. */
export function parseKeysFile(text: string, source: string): ApiKeyRecord[] {
  let raw: unknown;
  try {
    raw = parse(text) ?? {};
  } catch (err) {
    throw new KeyStoreError(`${source}: not valid YAML: ${(err as Error).message}`, "invalid");
  }
  const parsed = fileSchema.safeParse(raw);
  if (!parsed.success) throw new KeyStoreError(`${source}: ${z.prettifyError(parsed.error)}`, "invalid");
  const ids = new Set<string>();
  for (const k of parsed.data.keys) {
    if (ids.has(k.id)) throw new KeyStoreError(`${source}: duplicate key id ${k.id}`, "invalid");
    ids.add(k.id);
  }
  return parsed.data.keys;
}

/**
 * Whether a key may use a model or one of its LoRA adapters: an empty list allows everything; a model's
 * name allows the model and all of its adapters; an adapter's name allows that adapter only (not its
 * base model, not the model's other adapters).
 */
export function mayUse(
  key: Pick<ApiKeyRecord, "allowedModels">,
  model: string,
  adapter?: string | undefined,
): boolean {
  const allowed = key.allowedModels;
  return (
    allowed.length === 0 || allowed.includes(model) || (adapter !== undefined && allowed.includes(adapter))
  );
}

export type NewKeyInit = {
  tenant: string;
  allowedModels: readonly string[];
  limits: ApiKeyLimits;
  priority?: ApiKeyRecord["priority"];
  weight?: number;
};

export interface KeyStore {
  /** The valid (not revoked) key with this secret, if any. */
  authenticate(secret: string): ApiKeyRecord | undefined;
  list(filter?: { tenant?: string; includeRevoked?: boolean }): ApiKeyRecord[];
  /** Stores a new key; resolves once stored and in force here. */
  create(
    init: NewKeyInit,
  ): { record: ApiKeyRecord; secret: string } | Promise<{ record: ApiKeyRecord; secret: string }>;
  revoke(id: string): ApiKeyRecord | Promise<ApiKeyRecord>;
  /** Calls back after every reload or change (limits may have changed). */
  onChange(listener: () => void): void;
  close(): void;
}

/**
 * The keys in force and their lookups, shared by both stores: `set` replaces the list (after a load or a
 * write) and tells the listeners.
 */
export function createKeyIndex() {
  let keys: ApiKeyRecord[] = [];
  let byHash = new Map<string, ApiKeyRecord>();
  const listeners: (() => void)[] = [];
  return {
    get keys(): readonly ApiKeyRecord[] {
      return keys;
    },
    set(next: ApiKeyRecord[]) {
      keys = next;
      byHash = new Map(keys.filter((k) => k.revokedAt === undefined).map((k) => [k.sha256, k]));
      for (const l of listeners) l();
    },
    authenticate(secret: string): ApiKeyRecord | undefined {
      if (!secret.startsWith(SECRET_PREFIX) || secret.length > 256) return undefined;
      return byHash.get(hashSecret(secret));
    },
    list(filter: { tenant?: string; includeRevoked?: boolean } = {}): ApiKeyRecord[] {
      return keys
        .filter((k) => (filter.tenant ? k.tenant === filter.tenant : true))
        .filter((k) => filter.includeRevoked || k.revokedAt === undefined)
        .sort((a, b) => a.tenant.localeCompare(b.tenant) || a.id.localeCompare(b.id));
    },
    onChange(listener: () => void) {
      listeners.push(listener);
    },
  };
}

/** `keys` with the key `id` revoked at `at` (unchanged if it already is); not-found if there is none. */
export function withRevoked(
  keys: readonly ApiKeyRecord[],
  id: string,
  at: Date,
): { keys: ApiKeyRecord[]; key: ApiKeyRecord } {
  const key = keys.find((k) => k.id === id);
  if (key === undefined) throw new KeyStoreError(`no API key ${id}`, "not-found");
  if (key.revokedAt !== undefined) return { keys: [...keys], key };
  const revoked = { ...key, revokedAt: at.toISOString() };
  return { keys: keys.map((k) => (k.id === id ? revoked : k)), key: revoked };
}

export interface KeyStoreOptions {
  file: string;
  onReloadError?: (err: Error) => void;
  now?: () => Date;
}

export function openKeyStore(options: KeyStoreOptions): KeyStore {
  const { file } = options;
  const now = options.now ?? (() => new Date());
  const index = createKeyIndex();
  index.set(parseKeysFile(readFileSync(file, "utf8"), file));

  /** The file's text as last read or written, to tell a real change from a touch. */
  let last = readFileSync(file, "utf8");

  const save = (next: ApiKeyRecord[]) => {
    const tmp = join(dirname(file), `.${basename(file)}.${process.pid}.tmp`);
    try {
      writeFileSync(tmp, stringify({ keys: next }), { mode: 0o600 });
      renameSync(tmp, file);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "EROFS" || code === "EACCES" || code === "EPERM")
        throw new KeyStoreError(
          `${file} is read-only (a mounted Secret?): change keys in the Secret itself`,
          "read-only",
        );
      throw err;
    }
    last = readFileSync(file, "utf8");
    index.set(next);
  };

  // Reload on change (atomic renames and Secret symlink swaps replace the file: common/fs/watch-file.ts).
  const reload = () => {
    try {
      const text = readFileSync(file, "utf8");
      if (text === last) return;
      const next = parseKeysFile(text, file);
      last = text;
      index.set(next);
    } catch (err) {
      options.onReloadError?.(err as Error);
    }
  };
  const watcher = watchFile(file, reload);

  return {
    authenticate: index.authenticate,
    list: index.list,
    create(init) {
      const created = newKey({ ...init, now: now() });
      save([...index.keys, created.record]);
      return created;
    },
    revoke(id) {
      const { keys, key } = withRevoked(index.keys, id, now());
      if (keys.some((k, i) => k !== index.keys[i])) save(keys);
      return key;
    },
    onChange: index.onChange,
    close() {
      watcher.close();
    },
  };
}
