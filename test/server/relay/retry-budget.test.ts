/**
 * The retry budget (Envoy's): retries in progress stay below `ratio` of the requests in flight, or `min`,
 * whichever is more; each release counts once, however often it is called.
 */
import { expect, it } from "vitest";
import { createRetryBudget } from "../../../server/relay/retry-budget.js";

it("allows max(min, floor(ratio x in flight)) retries at once, and no more", () => {
  const budget = createRetryBudget(0.2, 2);
  const leave = Array.from({ length: 20 }, () => budget.enter());
  expect(budget.inFlight).toBe(20);
  // 20 in flight at 20%: 4 retries (more than the minimum of 2).
  const held = Array.from({ length: 4 }, () => budget.tryAcquire());
  expect(held.every((r) => r !== undefined)).toBe(true);
  expect(budget.tryAcquire()).toBeUndefined();
  // One released: one more may start, and then none.
  held[0]?.();
  expect(budget.tryAcquire()).toBeDefined();
  expect(budget.tryAcquire()).toBeUndefined();
  // Few requests in flight: the minimum still allows 2.
  for (const l of leave.slice(3)) l();
  expect(budget.inFlight).toBe(3);
  const small = createRetryBudget(0.2, 2);
  small.enter();
  expect(small.tryAcquire()).toBeDefined();
  expect(small.tryAcquire()).toBeDefined();
  expect(small.tryAcquire()).toBeUndefined();
});

it("a release or a leave counts once, however often it is called", () => {
  const budget = createRetryBudget(0, 1);
  const leave = budget.enter();
  leave();
  leave();
  expect(budget.inFlight).toBe(0);
  const release = budget.tryAcquire();
  expect(release).toBeDefined();
  release?.();
  release?.();
  // Released once: exactly one retry may be taken again (twice released would allow two).
  expect(budget.tryAcquire()).toBeDefined();
  expect(budget.tryAcquire()).toBeUndefined();
});
