/**
 * Kubernetes resource quantities ("500m", "2", "1.5Gi", "16e3"), as numbers. Written here because the
 * helper in @kubernetes/client-node is not exported from its package root and throws on valid fractional
 * binary quantities such as "1.5Gi". Throws RangeError on anything that is not a quantity.
 */

const SUFFIXES: Record<string, number> = {
  n: 1e-9,
  u: 1e-6,
  m: 1e-3,
  "": 1,
  k: 1e3,
  M: 1e6,
  G: 1e9,
  T: 1e12,
  P: 1e15,
  E: 1e18,
  Ki: 2 ** 10,
  Mi: 2 ** 20,
  Gi: 2 ** 30,
  Ti: 2 ** 40,
  Pi: 2 ** 50,
  Ei: 2 ** 60,
};

const QUANTITY = /^([+-]?(?:\d+\.?\d*|\.\d+))(?:([eE][+-]?\d+)|(n|u|m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei))?$/;

/** The value of a quantity in base units (cores, bytes, devices). */
export function parseQuantity(quantity: string): number {
  const m = QUANTITY.exec(quantity.trim());
  if (m === null) throw new RangeError(`not a Kubernetes quantity: "${quantity}"`);
  const value =
    Number(m[1]) * (m[2] !== undefined ? 10 ** Number(m[2].slice(1)) : (SUFFIXES[m[3] ?? ""] as number));
  if (!Number.isFinite(value)) throw new RangeError(`quantity out of range: "${quantity}"`);
  return value;
}
