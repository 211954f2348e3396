/**
 * What kinfer's programs (kinfer-gateway, kinfer-scheduler, kinfer-sim, the replay) do the same way at
 * their edges: run `main` when the module is the process's entry point, report a failure as one line
 * `<program>: <message>` with exit status 2 (bad flags, a bad config), and stop cleanly once on SIGINT
 * or SIGTERM.
 */
import { realpathSync } from "node:fs";
import { pathToFileURL } from "node:url";

/** Whether the module at `moduleUrl` (its import.meta.url) is the script node was started with. */
export function isEntryPoint(moduleUrl: string): boolean {
  const script = process.argv[1];
  if (script === undefined) return false;
  try {
    return pathToFileURL(realpathSync(script)).href === moduleUrl;
  } catch {
    return false;
  }
}

/** Runs a program's main; a failure prints `name: message` (or `explain(err)`) and exits with status 2. */
export function runProgram(
  name: string,
  main: () => Promise<void> | void,
  explain: (err: unknown) => string = (err) => (err instanceof Error ? err.message : String(err)),
): void {
  const fail = (err: unknown) => {
    console.error(`${name}: ${explain(err)}`);
    process.exit(2);
  };
  try {
    Promise.resolve(main()).catch(fail);
  } catch (err) {
    fail(err);
  }
}

/** Calls `stop` once on the first SIGINT or SIGTERM; exits 0 when it resolves, 1 when it rejects. */
export function stopOnSignal(stop: () => Promise<unknown>): void {
  let stopping = false;
  const onSignal = () => {
    if (stopping) return;
    stopping = true;
    stop().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
}
