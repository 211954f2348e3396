/**
 * The FGD authors' reduction of pod events to an allocation ratio per arrived-demand level: rounding of
 * the level (halves to even, as Python's round), the mean over the events at a level, the fallback to
 * the neighbouring levels, and NaN where no event came near.
 */
import { describe, expect, it } from "vitest";
import { createAllocationTrace, roundHalfEven } from "../../../scheduler/replay/allocation-levels.js";

describe("allocation levels", () => {
  it("rounds halves to even, as Python's round", () => {
    expect([0.5, 1.5, 2.5, 2.4999, 2.5001, 129.5, 130.5].map(roundHalfEven)).toEqual([
      0, 2, 2, 2, 3, 130, 130,
    ]);
  });

  it("averages the events whose arrived demand rounds to the level", () => {
    // 10 GPUs: 100 thousandths are 1%.
    const t = createAllocationTrace(10_000);
    t.record(960, 900); // level 10 (9.6%), 9%
    t.record(1040, 1000); // level 10, 10%
    t.record(1049, 1000); // level 10, 10%
    t.record(1100, 1050); // level 11
    const levels = t.levels(12);
    expect(levels[10]).toBeCloseTo((9 + 10 + 10) / 3, 2);
    expect(levels[11]).toBe(10.5);
    // Level 9 has no event: the events at 8 to 10 (here those at 10) stand in; 12 has 11's; 5, none.
    expect(levels[9]).toBeCloseTo((9 + 10 + 10) / 3, 2);
    expect(levels[12]).toBe(10.5);
    expect(levels[5]).toBeNaN();
  });
});
