/**
 * `npm start`: the whole platform on this machine, no GPU. Starts one simulated vLLM replica (sim/) for
 * every replica URL in deploy/local/gateway.yaml, serving its model's name, then the gateway with that
 * config. Ctrl-C stops everything.
 */
import { loadGatewayConfig } from "../../server/config/gateway-config.js";
import { main as gatewayMain } from "../../server/main.js";
import { startSimServer } from "../../sim/http/sim-server.js";

const file = new URL("./gateway.yaml", import.meta.url).pathname;
const config = await loadGatewayConfig(file);
for (const model of config.models) {
  for (const version of model.versions) {
    for (const url of version.replicas) {
      const { hostname, port } = new URL(url);
      const replica = await startSimServer({
        model: version.servedModelName ?? model.name,
        host: hostname,
        port: Number(port),
        engine: { maxModelLen: model.maxContextTokens || 8192 },
      });
      console.log(`kinfer-sim: ${replica.model} (${version.name}) at ${replica.url}`);
    }
  }
}
await gatewayMain(["--config", file, ...process.argv.slice(2)]);
