/**
 * Reloads the config file when it changes. The directory is watched, not the file, so that editors'
 * atomic renames and Kubernetes ConfigMap symlink swaps are seen. Changes are debounced; a file that
 * fails validation is reported and the running config is kept.
 */
import { watch } from "node:fs";
import { basename, dirname } from "node:path";
import { type GatewayConfig, loadGatewayConfig } from "./gateway-config.js";

export interface ConfigWatcher {
  close(): void;
}

export function watchConfigFile(
  file: string,
  onConfig: (config: GatewayConfig) => void,
  onError: (err: Error) => void,
  debounceMs = 100,
): ConfigWatcher {
  let timer: NodeJS.Timeout | undefined;
  let last = "";
  const reload = () => {
    timer = undefined;
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
  // The first load is the caller's; remember it so that a touch without changes is not a reload.
  loadGatewayConfig(file).then(
    (config) => {
      last = JSON.stringify(config);
    },
    () => {},
  );
  const name = basename(file);
  const watcher = watch(dirname(file), (_event, changed) => {
    if (changed !== null && changed !== name && !changed.startsWith("..")) return;
    clearTimeout(timer);
    timer = setTimeout(reload, debounceMs);
  });
  watcher.on("error", onError);
  return {
    close() {
      clearTimeout(timer);
      watcher.close();
    },
  };
}
