/**
 * kinfer-scheduler: the GPU-aware kube-scheduler extender.
 *
 *   kinfer-scheduler [--host 127.0.0.1] [--port 8888] [--policy fragmentation] [--kubeconfig FILE]
 *                    [--no-bind] [--filter-returns best|all] [--log-format json|text]
 *   kinfer-scheduler --cluster deploy/local/cluster.yaml      a simulated cluster, no Kubernetes
 *
 * --filter-returns best (the default) makes the filter return only the node the policy picks, so that
 * kube-scheduler skips scoring (prioritize is never called); "all" returns every node that fits and
 * leaves the choice to kube-scheduler's scoring with prioritize.
 *
 * In a cluster it keeps its cache of nodes and pods with informers (in-cluster config, or --kubeconfig,
 * or ~/.kube/config) and binds pods through the API (unless --no-bind, for extenders configured without
 * bindVerb). With --cluster, nodes and running pods come from a file (cluster/local-cluster-source.ts) and
 * bind is recorded in memory.
 */

import { parseArgs } from "node:util";
import { KubeConfig } from "@kubernetes/client-node";
import { createLogger } from "../common/log/logger.js";
import { isEntryPoint, runProgram, stopOnSignal } from "../common/process/program.js";
import { createClusterState } from "./cluster/cluster-state.js";
import { startKubeSource } from "./cluster/kube-cluster-source.js";
import { loadLocalCluster } from "./cluster/local-cluster-source.js";
import { createKubeBinder } from "./extender/kube-binder.js";
import { createLocalBinder } from "./extender/local-binder.js";
import { isPolicyName } from "./policies/policies.js";
import { startSchedulerServer } from "./scheduler-server.js";

const HELP = `kinfer-scheduler: the GPU-aware kube-scheduler extender

  --host ADDR                 the extender's address: kube-scheduler's only (default 127.0.0.1)
  --port PORT                 the extender's port, with the full SchedulingService (default 8888)
  --ops-host ADDR             a read-only port's address: metrics, health, Explain (default 0.0.0.0)
  --ops-port PORT             the read-only port (default: none)
  --policy NAME               spread, binpack, bestfit or fragmentation (default fragmentation)
  --filter-returns best|all   filter returns the policy's pick only, or every node that fits (default best)
  --kubeconfig FILE           credentials (default: in-cluster, then ~/.kube/config)
  --no-bind                   for an extender configured without bindVerb
  --cluster FILE              no Kubernetes: nodes and pods from a YAML (Node, Pod) or openb CSV file
  --log-format json|text      JSON lines (default) or readable lines
  --log-level LEVEL           debug, info, warn, error (default info)
`;

export async function main(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      host: { type: "string", default: "127.0.0.1" },
      port: { type: "string", default: "8888" },
      "ops-host": { type: "string", default: "0.0.0.0" },
      "ops-port": { type: "string" },
      policy: { type: "string", default: "fragmentation" },
      kubeconfig: { type: "string" },
      "no-bind": { type: "boolean", default: false },
      "filter-returns": { type: "string", default: "best" },
      cluster: { type: "string" },
      "log-format": { type: "string", default: "json" },
      "log-level": { type: "string", default: "info" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    process.stdout.write(HELP);
    return;
  }
  if (!isPolicyName(values.policy)) throw new Error(`--policy: unknown policy "${values.policy}"`);
  const filterReturns = values["filter-returns"];
  if (filterReturns !== "best" && filterReturns !== "all")
    throw new Error(`--filter-returns: "best" or "all", not "${filterReturns}"`);
  const portOf = (flag: string, value: string) => {
    const port = Number(value);
    if (value.trim() === "" || !Number.isInteger(port) || port < 0 || port > 65_535)
      throw new Error(`--${flag}: not a port: ${value}`);
    return port;
  };
  const port = portOf("port", values.port);
  const opsPort = values["ops-port"] === undefined ? undefined : portOf("ops-port", values["ops-port"]);
  const format = values["log-format"];
  if (format !== "json" && format !== "text")
    throw new Error(`--log-format: "json" or "text", not "${format}"`);
  if (!["debug", "info", "warn", "error", "silent"].includes(values["log-level"]))
    throw new Error(`--log-level: debug, info, warn, error or silent, not "${values["log-level"]}"`);
  if (values.cluster !== undefined && values.kubeconfig !== undefined)
    throw new Error("--cluster runs without Kubernetes: leave out --kubeconfig");
  const logger = createLogger(values["log-level"], "kinfer-scheduler", format);
  const log = (message: string, fields: Record<string, unknown> = {}) => logger.info(fields, message);

  const state = createClusterState();
  let binder: ReturnType<typeof createLocalBinder> | undefined;
  let closeSource = async () => {};
  if (values.cluster !== undefined) {
    const loaded = loadLocalCluster(values.cluster, state);
    log("local cluster loaded", { file: values.cluster, ...loaded });
    binder = createLocalBinder(state);
  } else {
    const kc = new KubeConfig();
    if (values.kubeconfig !== undefined) kc.loadFromFile(values.kubeconfig);
    else kc.loadFromDefault();
    const source = startKubeSource(kc, state, { log: (m, f) => logger.warn(f ?? {}, m) });
    await source.synced;
    closeSource = () => source.close();
    if (!values["no-bind"]) binder = createKubeBinder(kc);
  }
  const server = await startSchedulerServer({
    host: values.host,
    port,
    ...(opsPort !== undefined ? { ops: { host: values["ops-host"], port: opsPort } } : {}),
    state,
    defaultPolicy: values.policy,
    filterReturns,
    ...(binder !== undefined ? { binder } : {}),
  });
  log("ready", {
    url: server.url,
    opsUrl: server.opsUrl,
    nodes: state.nodes.size,
    pods: state.podCount,
    policy: values.policy,
  });
  process.stdout.write(`kinfer-scheduler: ready at ${server.url}\n`);
  stopOnSignal(() => Promise.all([server.close(), closeSource()]));
}

if (isEntryPoint(import.meta.url)) runProgram("kinfer-scheduler", () => main(process.argv.slice(2)));
