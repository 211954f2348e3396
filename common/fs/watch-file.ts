/**
 * Calls back when a file may have changed. The directory is watched, not the file: editors replace files
 * by atomic rename, and Kubernetes swaps a mounted ConfigMap's or Secret's files through a `..data`
 * symlink, neither of which a watch on the file itself survives. Events are debounced; the callback reads
 * the file and decides whether anything changed (an event is not proof of a change).
 */
import { watch } from "node:fs";
import { basename, dirname } from "node:path";

export interface FileWatch {
  close(): void;
}

export function watchFile(
  file: string,
  onChange: () => void,
  onError?: (err: Error) => void,
  debounceMs = 50,
): FileWatch {
  const name = basename(file);
  let timer: NodeJS.Timeout | undefined;
  const watcher = watch(dirname(file), (_event, changed) => {
    if (changed !== null && changed !== name && !changed.startsWith("..")) return;
    clearTimeout(timer);
    timer = setTimeout(onChange, debounceMs);
  });
  watcher.on("error", (err) => onError?.(err));
  return {
    close() {
      clearTimeout(timer);
      watcher.close();
    },
  };
}
