/**
 * grpc.health.v1.Health, for kubelet gRPC probes, grpc-health-probe and load balancers. The server ("")
 * and each served service report SERVING until the gateway starts draining, then NOT_SERVING. Watch sends
 * the current status and every change until the client leaves.
 */
import { Code, ConnectError, type ConnectRouter } from "@connectrpc/connect";
import {
  Health,
  HealthCheckResponse_ServingStatus as Status,
} from "../../gen/es/grpc/health/v1/health_pb.js";

/** The serving state the health service reports; `set` notifies watchers. */
export interface HealthState {
  readonly serving: boolean;
  set(serving: boolean): void;
  /** Resolves at the next change, or when `signal` aborts. */
  changed(signal: AbortSignal): Promise<void>;
}

export function createHealthState(): HealthState {
  let serving = true;
  let waiters: (() => void)[] = [];
  return {
    get serving() {
      return serving;
    },
    set(next) {
      if (next === serving) return;
      serving = next;
      for (const w of waiters.splice(0)) w();
    },
    changed(signal) {
      return new Promise<void>((resolve) => {
        const done = () => {
          waiters = waiters.filter((w) => w !== done);
          signal.removeEventListener("abort", done);
          resolve();
        };
        waiters.push(done);
        signal.addEventListener("abort", done, { once: true });
      });
    },
  };
}

export function registerHealthService(
  router: ConnectRouter,
  state: HealthState,
  services: readonly string[],
): void {
  const known = new Set(["", ...services]);
  const status = (service: string) => {
    if (!known.has(service)) return Status.SERVICE_UNKNOWN;
    return state.serving ? Status.SERVING : Status.NOT_SERVING;
  };
  router.service(Health, {
    check(req) {
      if (!known.has(req.service)) throw new ConnectError(`unknown service "${req.service}"`, Code.NotFound);
      return { status: status(req.service) };
    },
    async *watch(req, ctx) {
      let last: Status | undefined;
      while (!ctx.signal.aborted) {
        const now = status(req.service);
        if (now !== last) {
          last = now;
          yield { status: now };
        }
        await state.changed(ctx.signal);
      }
    },
  });
}
