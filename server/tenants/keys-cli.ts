/**
 * `npm run keys -- create --tenant acme [--models a,b] [--rpm N] [--tpm N] [--streams N]
 *   [--priority critical|standard|sheddable] [--weight W]`
 *
 * Makes a new API key without a running gateway, for keys kept in a Kubernetes Secret (which the gateway
 * mounts read-only): prints the entry to add under `keys:` in the Secret's keys.yaml on stdout, and the
 * secret, which is shown only this once, on stderr.
 */
import { parseArgs } from "node:util";
import { stringify } from "yaml";
import { KeyStoreError, newKey } from "./key-store.js";

const USAGE =
  "usage: npm run keys -- create --tenant NAME [--models a,b] [--rpm N] [--tpm N] [--streams N]\n" +
  "         [--priority critical|standard|sheddable] [--weight W]";
const PRIORITIES = ["critical", "standard", "sheddable"] as const;

function count(name: string, value: string | undefined): number {
  if (value === undefined) return 0;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0)
    throw new KeyStoreError(`--${name}: not a whole number: ${value}`, "invalid");
  return n;
}

const OPTIONS = {
  tenant: { type: "string" },
  models: { type: "string" },
  rpm: { type: "string" },
  tpm: { type: "string" },
  streams: { type: "string" },
  priority: { type: "string" },
  weight: { type: "string" },
} as const;

export function main(argv: string[]): number {
  let parsed: ReturnType<
    typeof parseArgs<{ args: string[]; allowPositionals: true; options: typeof OPTIONS }>
  >;
  try {
    parsed = parseArgs({ args: argv, allowPositionals: true, options: OPTIONS });
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n${USAGE}\n`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (positionals[0] !== "create" || values.tenant === undefined) {
    process.stderr.write(`${USAGE}\n`);
    return 2;
  }
  try {
    const priority = PRIORITIES.find((p) => p === values.priority);
    if (values.priority !== undefined && priority === undefined)
      throw new KeyStoreError(
        `--priority: one of ${PRIORITIES.join(", ")}, not ${values.priority}`,
        "invalid",
      );
    const { record, secret } = newKey({
      tenant: values.tenant,
      allowedModels: (values.models ?? "").split(",").filter((m) => m !== ""),
      limits: {
        requestsPerMinute: count("rpm", values.rpm),
        tokensPerMinute: count("tpm", values.tpm),
        maxConcurrentStreams: count("streams", values.streams),
      },
      ...(priority !== undefined ? { priority } : {}),
      ...(values.weight !== undefined ? { weight: Number(values.weight) } : {}),
    });
    process.stdout.write(stringify([record]));
    process.stderr.write(`secret (shown once; give it to the tenant): ${secret}\n`);
    return 0;
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n`);
    return 1;
  }
}

process.exitCode = main(process.argv.slice(2));
