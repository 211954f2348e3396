/** Tests of the built SDK read sdk/dist; they do not build it themselves (parallel builds would race). */
import { existsSync } from "node:fs";

/** The SDK's build (npm test builds it first: `npm run build:sdk`). */
export function requireSdkBuild(): void {
  if (!existsSync(new URL("../../sdk/dist/esm/sdk/src/index.js", import.meta.url))) {
    throw new Error("sdk/dist is missing: run `npm run build:sdk` first (npm test does)");
  }
}
