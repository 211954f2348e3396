/**
 * `npm start`: the whole platform on this machine, no GPU and no cluster.
 * - one simulated vLLM server (sim/) for every replica URL in deploy/local/gateway.yaml, serving its
 *   model's name;
 * - the gateway with that config (reloaded when the file changes);
 * - kinfer-scheduler on the simulated GPU cluster of deploy/local/cluster.yaml.
 * It prints one line per component and commands to try, then only warnings and errors, as readable
 * lines (the config's logFormat: text). Ctrl-C drains the gateway and stops everything.
 */
import { createLogger } from "../../common/log/logger.js";
import { stopOnSignal } from "../../common/process/program.js";
import { createClusterState } from "../../scheduler/cluster/cluster-state.js";
import { loadLocalCluster } from "../../scheduler/cluster/local-cluster-source.js";
import { createLocalBinder } from "../../scheduler/extender/local-binder.js";
import { startSchedulerServer } from "../../scheduler/scheduler-server.js";
import { loadGatewayConfig } from "../../server/config/gateway-config.js";
import { watchConfigFile } from "../../server/config/watch-config.js";
import { openControl } from "../../server/control/open-control.js";
import { startGateway } from "../../server/gateway.js";
import { type SimServer, startSimServer } from "../../sim/http/sim-server.js";

const here = (file: string) => new URL(file, import.meta.url).pathname;
const configFile = here("./gateway.yaml");
const clusterFile = here("./cluster.yaml");
const SCHEDULER_PORT = 8888;

const config = await loadGatewayConfig(configFile);
const log = createLogger(config.logLevel, "kinfer-gateway", config.logFormat);

const sims: { server: SimServer; version: string }[] = [];
for (const model of config.models) {
  for (const version of model.versions) {
    for (const url of version.replicas) {
      const { hostname, port } = new URL(url);
      const server = await startSimServer({
        model: version.servedModelName ?? model.name,
        host: hostname,
        port: Number(port),
        engine: { maxModelLen: model.maxContextTokens || 8192 },
        // LoRA adapters may be loaded at run time (the admin API's LoadAdapter), as on vLLM with
        // --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True.
        enableLora: true,
      });
      sims.push({ server, version: version.name });
    }
  }
}

const { control, leader } = await openControl(
  config,
  () => {
    throw new Error("npm start keeps the control state in a file, not in a cluster");
  },
  (msg, fields) => log.warn(fields ?? {}, msg),
);
const gateway = await startGateway({ config, log, control, leader });
const watcher = watchConfigFile(
  configFile,
  config,
  (next) => gateway.applyConfig(next),
  (err) => {
    gateway.metrics.reloaded("config", "rejected");
    log.error({ err: err.message }, "config reload failed; keeping the running config");
  },
);

const state = createClusterState();
const cluster = loadLocalCluster(clusterFile, state);
const scheduler = await startSchedulerServer({
  host: "127.0.0.1",
  port: SCHEDULER_PORT,
  state,
  defaultPolicy: "fragmentation",
  filterReturns: "best",
  binder: createLocalBinder(state),
});

const replicas = config.models
  .map((m) => {
    const mine = sims.filter((s) => s.server.model === (m.versions[0]?.servedModelName ?? m.name));
    return `${m.name} ${mine.map((s) => `:${s.server.port} (${s.version})`).join(" ")}`;
  })
  .join("; ");
process.stdout.write(`kinfer: the platform is running on this machine (Ctrl-C stops it)
  simulated vLLM  ${replicas}
  gateway         ${gateway.url}   OpenAI ${gateway.url}/v1, gRPC and Connect kinfer.inference.v1.InferenceService
  admin API       ${gateway.adminUrl ?? "off"}   kinfer.admin.v1.AdminService (bearer token in deploy/local/gateway.yaml; changes kept in ${config.control.file ?? "memory"})
  scheduler       ${scheduler.url}   kinfer.scheduling.v1.SchedulingService, /scheduler/filter: ${cluster.nodes} GPU nodes from deploy/local/cluster.yaml
  metrics         ${gateway.url}/metrics   ${scheduler.url}/metrics
try:
  curl -N ${gateway.url}/v1/chat/completions -H 'content-type: application/json' \\
    -d '{"model":"llama-3-8b","stream":true,"messages":[{"role":"user","content":"Hello"}]}'
  npx buf curl --http2-prior-knowledge --protocol grpc -d '{"pod":{"metadata":{"name":"p","annotations":{"kinfer.io/gpu-milli":"500"}}}}' \\
    ${scheduler.url}/kinfer.scheduling.v1.SchedulingService/Explain
kinfer: ready
`);

stopOnSignal(async () => {
  watcher.close();
  await gateway.drain();
  await Promise.all([scheduler.close(), ...sims.map((s) => s.server.close())]);
  process.stdout.write("kinfer: stopped\n");
});
