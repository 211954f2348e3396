/**
 * The paired comparison's statistics: Student t quantiles against tabulated values, and the confidence
 * interval of a mean difference computed by hand.
 */
import { describe, expect, it } from "vitest";
import { pairedDifference, studentTQuantile } from "../../../scheduler/replay/paired-stats.js";

describe("paired statistics", () => {
  it.each([
    [1, 12.706],
    [4, 2.776],
    [9, 2.262],
    [19, 2.093],
    [29, 2.045],
    [1000, 1.962],
  ])("t(0.975, %i) = %f", (df, t) => {
    expect(studentTQuantile(0.975, df)).toBeCloseTo(t, 3);
  });

  it("the 95% interval of a paired mean difference", () => {
    const a = [95.5, 95.6, 95.4, 95.7, 95.5];
    const b = [95.3, 95.5, 95.3, 95.4, 95.4];
    // Differences 0.2, 0.1, 0.1, 0.3, 0.1: mean 0.16, sd 0.0894, t(0.975, 4) = 2.776.
    const d = pairedDifference(a, b);
    expect(d.mean).toBeCloseTo(0.16, 10);
    expect(d.sd).toBeCloseTo(0.08944, 4);
    expect(d.high - d.mean).toBeCloseTo((2.776 * 0.08944) / Math.sqrt(5), 3);
    expect(d.low).toBeGreaterThan(0);
  });
});
