/**
 * Keeps a @kubernetes/client-node informer running. client-node 1.4.0 informers relist on 410 Gone and
 * re-watch when the server closes a watch, but stop on any other error until started again (an apiserver
 * restart is such an error), and a watch can go silent with no error at all (client-node issues #596,
 * #958). So every error restarts the informer after a backoff (1 s, doubling to 30 s, reset on success),
 * and a watchdog restarts an informer that has delivered no event for `silenceMs`. Call `touch()` on every
 * event. Objects already delivered stay with the caller while the informer reconnects.
 *
 * A restart stops the informer, which aborts its watch request; client-node reports that abort as an
 * error event (an AbortError) once the informer has started again. It is our own doing and is ignored:
 * taken for a failure, it restarted the informer every second, each restart a LIST, for as long as the
 * process ran (found in the cluster tests: every gateway relisted its KinferModels once a second after its
 * first silent five minutes).
 */
import type { Informer, KubernetesObject } from "@kubernetes/client-node";

export function superviseInformer<T extends KubernetesObject>(
  name: string,
  informer: Informer<T>,
  silenceMs: number,
  log: (message: string, fields?: Record<string, unknown>) => void,
): { touch(): void; stop(): Promise<void> } {
  let lastEvent = Date.now();
  let backoff = 1000;
  let stopped = false;
  let restartTimer: NodeJS.Timeout | undefined;
  const restart = (why: string) => {
    if (stopped || restartTimer !== undefined) return;
    log(`${name} informer restarting`, { why, backoffMs: backoff });
    restartTimer = setTimeout(() => {
      restartTimer = undefined;
      lastEvent = Date.now();
      informer
        .stop()
        .catch(() => {})
        .then(() => informer.start())
        .then(
          () => {
            backoff = 1000;
          },
          (err: unknown) => {
            backoff = Math.min(backoff * 2, 30_000);
            restart(String(err));
          },
        );
    }, backoff);
  };
  informer.on("error", (err) => {
    if ((err as { name?: unknown } | undefined)?.name === "AbortError") return; // our own stop()
    restart(String(err));
  });
  const watchdog = setInterval(
    () => {
      if (Date.now() - lastEvent > silenceMs) restart(`no event for ${silenceMs} ms`);
    },
    Math.min(60_000, silenceMs),
  );
  watchdog.unref();
  return {
    touch() {
      lastEvent = Date.now();
    },
    async stop() {
      stopped = true;
      clearTimeout(restartTimer);
      clearInterval(watchdog);
      await informer.stop();
    },
  };
}
