/**
 * The control state in this process's memory: for one gateway that needs nothing kept across restarts
 * (tests, a quick local run). The file and Kubernetes stores behave the same way through the same
 * interface; this one only never conflicts with anyone but itself.
 */
import {
  type ControlStore,
  checkControl,
  conflictError,
  createListeners,
  EMPTY_CONTROL,
  type VersionedControl,
} from "./control-state.js";

export function createMemoryControlStore(): ControlStore {
  const models = new Map<string, VersionedControl>();
  const listeners = createListeners();
  let counter = 0;
  return {
    kind: "memory",
    synced: Promise.resolve(),
    snapshot: () => models,
    async update(model, change, expectedVersion) {
      const current = models.get(model) ?? { control: EMPTY_CONTROL, version: "" };
      if (expectedVersion !== undefined && expectedVersion !== current.version)
        throw conflictError(model, `it is at version ${current.version || "(none)"}, not ${expectedVersion}`);
      const next = { control: checkControl(model, change(current.control)), version: String(++counter) };
      models.set(model, next);
      listeners.emit();
      return next;
    },
    onChange: (l) => listeners.add(l),
    async close() {},
  };
}
