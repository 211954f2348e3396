/**
 * kinfer-gateway: serves the inference API (gRPC, Connect, gRPC-Web, OpenAI REST) in front of vLLM replicas.
 *
 *   kinfer-gateway --config deploy/local/gateway.yaml
 *
 * The config file is reloaded when it changes (an invalid one is reported and ignored). SIGTERM or SIGINT
 * drains: health goes NOT_SERVING and in-flight streams may finish for timeouts.drainMs.
 */
import { parseArgs } from "node:util";
import { KubeConfig } from "@kubernetes/client-node";
import { createLogger } from "../common/log/logger.js";
import { isEntryPoint, runProgram, stopOnSignal } from "../common/process/program.js";
import { ConfigError, loadGatewayConfig } from "./config/gateway-config.js";
import { watchConfigFile } from "./config/watch-config.js";
import { openControl, podNamespace } from "./control/open-control.js";
import { createKubeEndpointSource } from "./discovery/endpoint-slice-source.js";
import type { EndpointSource } from "./discovery/endpoint-source.js";
import { startGateway } from "./gateway.js";
import { openSecretKeyStore, type SecretKeyStore } from "./tenants/secret-key-store.js";

export async function main(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      config: { type: "string", default: "deploy/local/gateway.yaml" },
      port: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    process.stdout.write("kinfer-gateway --config FILE [--port N]\n");
    return;
  }
  const file = values.config;
  const loaded = await loadGatewayConfig(file);
  let config = loaded;
  if (values.port !== undefined) {
    const port = Number(values.port);
    if (!Number.isInteger(port) || port < 0 || port > 65_535)
      throw new ConfigError(`--port: not a port: ${values.port}`);
    config = { ...config, listen: { ...config.listen, port } };
  }
  const log = createLogger(config.logLevel, "kinfer-gateway", config.logFormat);
  const kubeConfig = (file: string | undefined) => {
    const kc = new KubeConfig();
    if (file !== undefined) kc.loadFromFile(file);
    else kc.loadFromDefault();
    return kc;
  };
  let endpoints: EndpointSource | undefined;
  if (config.discovery.source === "kubernetes") {
    const kc = kubeConfig(config.discovery.kubeconfig);
    const source = createKubeEndpointSource(kc, {
      namespaces: config.discovery.namespaces ?? [],
      log: (msg, fields) => log.warn(fields ?? {}, msg),
    });
    await source.synced;
    endpoints = source;
  }
  const { control, leader } = await openControl(
    config,
    () => kubeConfig(config.control.kubeconfig),
    (msg, fields) => log.warn(fields ?? {}, msg),
  );
  // API keys in a Secret through the API (several gateways); a keys file is opened by the gateway itself.
  const keysSecret = config.tenants?.keysSecret;
  let keys: SecretKeyStore | undefined;
  /** Set once the gateway exists: its metrics count rejected reloads. */
  let onRejected: (source: "config" | "keys") => void = () => {};
  if (keysSecret !== undefined) {
    keys = openSecretKeyStore(kubeConfig(config.control.kubeconfig), {
      namespace: keysSecret.namespace ?? podNamespace(),
      name: keysSecret.name,
      key: keysSecret.key,
      onReloadError: (err) => {
        onRejected("keys");
        log.error({ err: err.message }, "API keys not reloaded; keeping the keys in force");
      },
      log: (msg, fields) => log.warn(fields ?? {}, msg),
    });
    await keys.synced;
  }
  const gateway = await startGateway({
    config,
    log,
    control,
    leader,
    ...(keys !== undefined ? { keys } : {}),
    ...(endpoints !== undefined ? { endpoints } : {}),
  });
  const watcher = watchConfigFile(
    file,
    loaded,
    (next) => gateway.applyConfig(values.port === undefined ? next : { ...next, listen: config.listen }),
    (err) => {
      gateway.metrics.reloaded("config", "rejected");
      log.error({ err: err.message }, "config reload failed; keeping the running config");
    },
  );
  onRejected = (source) => gateway.metrics.reloaded(source, "rejected");
  process.stdout.write(
    `kinfer-gateway: serving ${gateway.table
      .models()
      .map((m) => m.name)
      .join(", ")} at ${gateway.url}\n` +
      `  gRPC, Connect, gRPC-Web: ${gateway.url}/kinfer.inference.v1.InferenceService/\n` +
      `  OpenAI:                  ${gateway.url}/v1/chat/completions\n` +
      `  metrics:                 ${gateway.url}/metrics\n` +
      (gateway.adminUrl !== undefined ? `  admin:                   ${gateway.adminUrl}\n` : ""),
  );
  stopOnSignal(() => {
    watcher.close();
    return gateway.drain();
  });
}

if (isEntryPoint(import.meta.url)) runProgram("kinfer-gateway", () => main(process.argv.slice(2)));
