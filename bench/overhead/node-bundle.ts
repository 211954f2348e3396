/**
 * The Node programs of bench/gateway-overhead.ts compiled as production runs them (no tsx loader, whose
 * worker thread and source maps would count in their CPU and memory): one esbuild bundle per entry, its
 * packages left to node_modules, written where Node resolves them from (node_modules/.cache).
 */
import { join } from "node:path";
import { buildSync } from "esbuild";

const root = new URL("../..", import.meta.url).pathname;

const built = new Set<string>();

/**
 * Bundles `entry` (relative to the repository) once per run, and returns the bundle's path: every phase
 * of a run measures the same code, even if the sources change while it runs.
 */
export function nodeBundle(entry: string, name: string): string {
  const outfile = join(root, `node_modules/.cache/kinfer-bench/${name}.mjs`);
  if (built.has(outfile)) return outfile;
  built.add(outfile);
  buildSync({
    entryPoints: [join(root, entry)],
    bundle: true,
    platform: "node",
    format: "esm",
    target: "node20",
    packages: "external",
    outfile,
    logLevel: "warning",
  });
  return outfile;
}
