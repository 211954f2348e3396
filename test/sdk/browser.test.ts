/**
 * @kinfer/sdk/web in a real browser: a page on one localhost origin (bundled from the built package with
 * esbuild) streams tokens from the gateway on another origin, over Connect and over gRPC-Web, in headless
 * Chromium (Debian's, driven by playwright-core; no browser download). Both show the tokens a Node client
 * gets for the same request, which also proves the gateway's CORS answers.
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { build } from "esbuild";
import { chromium } from "playwright-core";
import { afterAll, beforeAll, expect, it } from "vitest";
import { createKinferClient } from "../../sdk/src/client.js";
import { createNodeTransport } from "../../sdk/src/node.js";
import { type Harness, startHarness } from "../helpers/gateway-harness.js";
import { requireSdkBuild } from "../helpers/sdk-build.js";

const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
let pages: Server;
let pageUrl: string;
let h: Harness;

beforeAll(async () => {
  requireSdkBuild();
  const bundle = await build({
    entryPoints: [new URL("./browser/page.ts", import.meta.url).pathname],
    bundle: true,
    format: "esm",
    platform: "browser",
    target: "es2022",
    write: false,
  });
  const js = bundle.outputFiles[0]?.text ?? "";
  const html = `<!doctype html><title>loading</title><pre id="connect"></pre><pre id="grpc-web"></pre><script type="module" src="/page.js"></script>`;
  pages = createServer((req, res) => {
    if (req.url === "/page.js") res.writeHead(200, { "content-type": "text/javascript" }).end(js);
    else res.writeHead(200, { "content-type": "text/html" }).end(html);
  });
  await new Promise<void>((r) => pages.listen(0, "127.0.0.1", r));
  pageUrl = `http://127.0.0.1:${(pages.address() as AddressInfo).port}`;
  h = await startHarness({ models: { m: { stable: 1 } }, config: { cors: { allowedOrigins: [pageUrl] } } });
}, 120_000);

afterAll(async () => {
  await h?.close();
  await new Promise((r) => pages?.close(r));
});

it("streams tokens into a page over Connect and gRPC-Web", async () => {
  const expected = await createKinferClient({ transport: createNodeTransport({ baseUrl: h.url }) })
    .generate({ model: "m", prompt: "Hello from a browser", sampling: { maxTokens: 12, seed: 5n } })
    .collect();
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  try {
    const page = await browser.newPage();
    await page.goto(`${pageUrl}/#${h.url}`);
    await page.waitForFunction('document.title !== "loading"', undefined, { timeout: 20_000 });
    expect(await page.title()).toBe("done");
    expect(await page.textContent("#connect")).toBe(expected.text);
    expect(await page.textContent("#grpc-web")).toBe(expected.text);
    expect(expected.text.length).toBeGreaterThan(0);
  } finally {
    await browser.close();
  }
}, 60_000);
