/**
 * The browser page of the SDK's browser test: streams one prompt through the gateway (whose URL is the
 * page's #hash) with @kinfer/sdk/web, over Connect and over gRPC-Web, writing the tokens into the page as
 * they arrive. The title becomes "done" (or "error: ...") at the end.
 */
import { createKinferClient } from "@kinfer/sdk";
import { createWebTransport } from "@kinfer/sdk/web";

const baseUrl = location.hash.slice(1);

async function stream(protocol: "connect" | "grpc-web", target: HTMLElement) {
  const kinfer = createKinferClient({
    transport: createWebTransport({ baseUrl, protocol }),
    timeoutMs: 10_000,
  });
  for await (const text of kinfer
    .generate({ model: "m", prompt: "Hello from a browser", sampling: { maxTokens: 12, seed: 5n } })
    .text()) {
    target.textContent = (target.textContent ?? "") + text;
  }
}

Promise.all([
  stream("connect", document.getElementById("connect") as HTMLElement),
  stream("grpc-web", document.getElementById("grpc-web") as HTMLElement),
]).then(
  () => {
    document.title = "done";
  },
  (err: unknown) => {
    document.title = `error: ${String(err)}`;
  },
);
