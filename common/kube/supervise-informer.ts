/**
 * Keeps a @kubernetes/client-node informer running. client-node 1.4.0 informers relist on 410 Gone and
 * re-watch when the server closes a watch, but stop on any other error until started again (an apiserver
 * restart is such an error), and a watch can go silent with no error at all (client-node issues #596,
 * #958). So every error restarts the informer after a backoff: 1 s, doubling for each failure that comes
 * within a minute of the one before (a streak: an apiserver down, RBAC refusing the list) up to 30 s,
 * and back to 1 s after a quiet minute or once an event arrives (`touch`). A watchdog restarts an informer that has delivered no event for
 * `silenceMs`, after 1 s (a silence is not a failure streak).
 *
 * Failures are counted as they are reported, not by whether start() resolved: client-node's start()
 * resolves even when its list fails (the failure goes to the error handlers), so a reset on "success"
 * never let the backoff grow (every failed relist retried after 1 s). Call `touch()` on every
 * event. Objects already delivered stay with the caller while the informer reconnects.
 *
 * A restart stops the informer, which aborts its watch request; client-node reports that abort as an
 * error event (an AbortError) once the informer has started again. It is our own doing and is ignored:
 * taken for a failure, it restarted the informer every second, each restart a LIST, for as long as the
 * process ran (found in the cluster tests: every gateway relisted its KinferModels once a second after its
 * first silent five minutes).
 */
import type { Informer, KubernetesObject } from "@kubernetes/client-node";

/** The first wait after a failure, the longest, and how long without failures ends a streak. */
const BASE_BACKOFF_MS = 1000;
const MAX_BACKOFF_MS = 30_000;
const STREAK_MS = 60_000;

export function superviseInformer<T extends KubernetesObject>(
  name: string,
  informer: Informer<T>,
  silenceMs: number,
  log: (message: string, fields?: Record<string, unknown>) => void,
): { touch(): void; stop(): Promise<void> } {
  let lastEvent = Date.now();
  let backoff = BASE_BACKOFF_MS;
  let lastFailureAt = Number.NEGATIVE_INFINITY;
  let stopped = false;
  let restartTimer: NodeJS.Timeout | undefined;
  const restart = (why: string, failed: boolean) => {
    if (stopped || restartTimer !== undefined) return;
    if (failed) {
      const t = Date.now();
      backoff = t - lastFailureAt < STREAK_MS ? Math.min(backoff * 2, MAX_BACKOFF_MS) : BASE_BACKOFF_MS;
      lastFailureAt = t;
    }
    const wait = failed ? backoff : BASE_BACKOFF_MS;
    log(`${name} informer restarting`, { why, backoffMs: wait });
    restartTimer = setTimeout(() => {
      restartTimer = undefined;
      lastEvent = Date.now();
      informer
        .stop()
        .catch(() => {})
        .then(() => informer.start())
        .catch((err: unknown) => restart(String(err), true));
    }, wait);
  };
  informer.on("error", (err) => {
    if ((err as { name?: unknown } | undefined)?.name === "AbortError") return; // our own stop()
    restart(String(err), true);
  });
  const watchdog = setInterval(
    () => {
      if (Date.now() - lastEvent > silenceMs) restart(`no event for ${silenceMs} ms`, false);
    },
    Math.min(60_000, silenceMs),
  );
  watchdog.unref();
  return {
    touch() {
      lastEvent = Date.now();
      lastFailureAt = Number.NEGATIVE_INFINITY; // delivering again: the next failure starts a new streak
    },
    async stop() {
      stopped = true;
      clearTimeout(restartTimer);
      clearInterval(watchdog);
      await informer.stop();
    },
  };
}
