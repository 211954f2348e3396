/**
 * kinfer-scheduler: the GPU-aware kube-scheduler extender.
 *
 *   kinfer-scheduler [--host 0.0.0.0] [--port 8888] [--policy fragmentation] [--kubeconfig FILE] [--no-bind]
 *                    [--filter-returns best|all]
 *
 * --filter-returns best (the default) makes the filter return only the node the policy picks, so that
 * kube-scheduler skips scoring (prioritize is never called); "all" returns every node that fits and
 * leaves the choice to kube-scheduler's scoring with prioritize.
 *
 * Keeps its cache of nodes and pods with informers (in-cluster config, or --kubeconfig, or ~/.kube/config)
 * and binds pods through the API (unless --no-bind, for extenders configured without bindVerb).
 */

import { parseArgs } from "node:util";
import { KubeConfig } from "@kubernetes/client-node";
import { isEntryPoint, runProgram, stopOnSignal } from "../common/process/program.js";
import { createClusterState } from "./cluster/cluster-state.js";
import { startKubeSource } from "./cluster/kube-cluster-source.js";
import { createKubeBinder } from "./extender/kube-binder.js";
import { isPolicyName } from "./policies/policies.js";
import { startSchedulerServer } from "./scheduler-server.js";

export async function main(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      host: { type: "string", default: "0.0.0.0" },
      port: { type: "string", default: "8888" },
      policy: { type: "string", default: "fragmentation" },
      kubeconfig: { type: "string" },
      "no-bind": { type: "boolean", default: false },
      "filter-returns": { type: "string", default: "best" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    process.stdout.write(
      "kinfer-scheduler [--host H] [--port N] [--policy spread|binpack|bestfit|fragmentation] [--kubeconfig FILE] [--no-bind] [--filter-returns best|all]\n",
    );
    return;
  }
  if (!isPolicyName(values.policy)) throw new Error(`--policy: unknown policy "${values.policy}"`);
  const filterReturns = values["filter-returns"];
  if (filterReturns !== "best" && filterReturns !== "all")
    throw new Error(`--filter-returns: "best" or "all", not "${filterReturns}"`);
  const port = Number(values.port);
  if (!Number.isInteger(port) || port < 0 || port > 65_535)
    throw new Error(`--port: not a port: ${values.port}`);
  const kc = new KubeConfig();
  if (values.kubeconfig !== undefined) kc.loadFromFile(values.kubeconfig);
  else kc.loadFromDefault();
  const log = (message: string, fields: Record<string, unknown> = {}) =>
    console.log(
      JSON.stringify({
        time: new Date().toISOString(),
        service: "kinfer-scheduler",
        msg: message,
        ...fields,
      }),
    );

  const state = createClusterState();
  const source = startKubeSource(kc, state, { log });
  await source.synced;
  const server = await startSchedulerServer({
    host: values.host,
    port,
    state,
    defaultPolicy: values.policy,
    filterReturns,
    ...(values["no-bind"] ? {} : { binder: createKubeBinder(kc) }),
  });
  log("ready", { url: server.url, nodes: state.nodes.size, pods: state.podCount, policy: values.policy });
  process.stdout.write(`kinfer-scheduler: ready at ${server.url}\n`);
  stopOnSignal(() => Promise.all([server.close(), source.close()]));
}

if (isEntryPoint(import.meta.url)) runProgram("kinfer-scheduler", () => main(process.argv.slice(2)));
