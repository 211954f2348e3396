/**
 * API keys in a Kubernetes Secret, through the API (`tenants.keysSecret`): the Secret stays the source of
 * truth, every gateway replica watches it (a ListWatch confined to that one Secret by a field selector, so
 * the gateway's Role names it and may read no other), and the admin API's CreateApiKey and RevokeApiKey
 * write it: read-modify-write over its resourceVersion, re-read and re-applied on a conflict with another
 * writer, up to CONFLICT_ATTEMPTS times. A change reaches every replica within a second, where a mounted
 * Secret would take the kubelet's sync period (about a minute). An entry that fails validation (an
 * operator's edit) is reported and the keys in force are kept; with the apiserver unreachable the keys in
 * force keep working and key calls fail with UNAVAILABLE.
 */
import {
  ApiException,
  CoreV1Api,
  type KubeConfig,
  ListWatch,
  type V1Secret,
  Watch,
} from "@kubernetes/client-node";
import { stringify } from "yaml";
import { superviseInformer } from "../../common/kube/supervise-informer.js";
import {
  type ApiKeyRecord,
  createKeyIndex,
  type KeyStore,
  KeyStoreError,
  newKey,
  parseKeysFile,
  withRevoked,
} from "./key-store.js";

const CONFLICT_ATTEMPTS = 5;

export interface SecretKeyStoreOptions {
  namespace: string;
  name: string;
  /** The Secret's data key holding the YAML. Default keys.yaml. */
  key?: string;
  onReloadError?: (err: Error) => void;
  log?: (message: string, fields?: Record<string, unknown>) => void;
  now?: () => Date;
}

export interface SecretKeyStore extends KeyStore {
  /** Resolves once the Secret has been read (rejects if it cannot be listed). */
  readonly synced: Promise<void>;
}

export function openSecretKeyStore(kc: KubeConfig, options: SecretKeyStoreOptions): SecretKeyStore {
  const { namespace, name } = options;
  const dataKey = options.key ?? "keys.yaml";
  const now = options.now ?? (() => new Date());
  const api = kc.makeApiClient(CoreV1Api);
  const index = createKeyIndex();
  const source = `Secret ${namespace}/${name} (${dataKey})`;
  let resourceVersion = "";

  const decode = (secret: V1Secret): ApiKeyRecord[] => {
    const data = secret.data?.[dataKey];
    return data === undefined ? [] : parseKeysFile(Buffer.from(data, "base64").toString("utf8"), source);
  };
  const load = (secret: V1Secret) => {
    // A watch event older than what we wrote ourselves changes nothing.
    const version = secret.metadata?.resourceVersion ?? "";
    if (Number(version) < Number(resourceVersion)) return;
    try {
      const keys = decode(secret);
      resourceVersion = version;
      index.set(keys);
    } catch (err) {
      options.onReloadError?.(err as Error);
    }
  };

  const informer = new ListWatch<V1Secret>(
    `/api/v1/namespaces/${namespace}/secrets`,
    new Watch(kc),
    () => api.listNamespacedSecret({ namespace, fieldSelector: `metadata.name=${name}` }),
    false,
    undefined,
    `metadata.name=${name}`,
  );
  const watch = superviseInformer("keys secret", informer, 300_000, options.log ?? (() => {}));
  informer.on("add", (s) => {
    watch.touch();
    load(s);
  });
  informer.on("update", (s) => {
    watch.touch();
    load(s);
  });
  informer.on("delete", () => {
    watch.touch();
    options.onReloadError?.(new Error(`${source} was deleted; keeping the keys in force`));
  });
  informer.on("connect", () => watch.touch());
  const synced = informer.start();

  /** Read-modify-write of the key list; `change` may throw a KeyStoreError (not found, invalid). */
  async function write<T>(
    change: (keys: readonly ApiKeyRecord[]) => { keys: ApiKeyRecord[]; result: T },
  ): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      let secret: V1Secret;
      try {
        secret = await api.readNamespacedSecret({ name, namespace });
      } catch (err) {
        throw new KeyStoreError(`${source} cannot be read: ${describe(err)}`, "unavailable");
      }
      const { keys, result } = change(decode(secret));
      try {
        const written = await api.replaceNamespacedSecret({
          name,
          namespace,
          body: {
            ...secret,
            data: { ...secret.data, [dataKey]: Buffer.from(stringify({ keys })).toString("base64") },
          },
        });
        load(written);
        return result;
      } catch (err) {
        if (err instanceof ApiException && err.code === 409 && attempt < CONFLICT_ATTEMPTS) continue;
        throw new KeyStoreError(`${source} cannot be written: ${describe(err)}`, "unavailable");
      }
    }
  }

  return {
    synced,
    authenticate: index.authenticate,
    list: index.list,
    create: (init) =>
      write((keys) => {
        const created = newKey({ ...init, now: now() });
        return { keys: [...keys, created.record], result: created };
      }),
    revoke: (id) =>
      write((keys) => {
        const { keys: next, key } = withRevoked(keys, id, now());
        return { keys: next, result: key };
      }),
    onChange: index.onChange,
    close() {
      void watch.stop();
    },
  };
}

function describe(err: unknown): string {
  if (err instanceof ApiException) return `${err.code} ${String(err.body).slice(0, 200)}`;
  return err instanceof Error ? err.message : String(err);
}
