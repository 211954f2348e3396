/**
 * Reloads the config file when it changes (common/fs/watch-file.ts: atomic renames and ConfigMap symlink
 * swaps are seen; events debounced). A file that fails validation is reported and the running config is
 * kept; one that parses to the same config is not a reload.
 */
import { watchFile } from "../../common/fs/watch-file.js";
import { type GatewayConfig, loadGatewayConfig } from "./gateway-config.js";

export interface ConfigWatcher {
  close(): void;
}

/** Watches `file`, whose config in force is `current` (what the caller loaded and started with). */
export function watchConfigFile(
  file: string,
  current: GatewayConfig,
  onConfig: (config: GatewayConfig) => void,
  onError: (err: Error) => void,
  debounceMs = 100,
): ConfigWatcher {
  // Compared with what is in force, not with a second read of the file: a change made between the
  // caller's load and this watch must still count as a change.
  let last = JSON.stringify(current);
  const reload = () => {
    loadGatewayConfig(file).then(
      (config) => {
        const fingerprint = JSON.stringify(config);
        if (fingerprint === last) return;
        last = fingerprint;
        onConfig(config);
      },
      (err: unknown) => onError(err as Error),
    );
  };
  return watchFile(file, reload, onError, debounceMs);
}
