/**
 * CORS on the public port for browser clients: preflights from configured origins get connect-es's
 * methods and headers (plus kinfer's), actual responses expose what Connect and gRPC-Web read, and other
 * origins get nothing.
 */
import { afterAll, beforeAll, expect, it } from "vitest";
import { type Harness, startHarness } from "../../helpers/gateway-harness.js";

const APP = "http://app.example";
let h: Harness;
beforeAll(async () => {
  h = await startHarness({ models: { m: { stable: 1 } }, config: { cors: { allowedOrigins: [APP] } } });
});
afterAll(() => h.close());

const preflight = (origin: string) =>
  fetch(`${h.url}/kinfer.inference.v1.InferenceService/Generate`, {
    method: "OPTIONS",
    headers: {
      origin,
      "access-control-request-method": "POST",
      "access-control-request-headers":
        "content-type,connect-protocol-version,x-grpc-web,authorization,x-session-id",
    },
  });

it("answers a preflight from an allowed origin", async () => {
  const res = await preflight(APP);
  expect(res.status).toBe(204);
  expect(res.headers.get("access-control-allow-origin")).toBe(APP);
  const methods = res.headers.get("access-control-allow-methods") ?? "";
  expect(methods).toMatch(/POST/);
  const headers = (res.headers.get("access-control-allow-headers") ?? "").toLowerCase();
  for (const h of [
    "content-type",
    "connect-protocol-version",
    "x-grpc-web",
    "authorization",
    "x-session-id",
  ]) {
    expect(headers).toContain(h);
  }
  expect(res.headers.get("access-control-max-age")).toBe("7200");
});

it("exposes Connect's and gRPC-Web's headers and x-request-id on actual responses", async () => {
  const res = await fetch(`${h.url}/kinfer.inference.v1.InferenceService/ListModels`, {
    method: "POST",
    headers: { origin: APP, "content-type": "application/json", "connect-protocol-version": "1" },
    body: "{}",
  });
  expect(res.status).toBe(200);
  expect(res.headers.get("access-control-allow-origin")).toBe(APP);
  const exposed = (res.headers.get("access-control-expose-headers") ?? "").toLowerCase();
  for (const h of ["grpc-status", "grpc-message", "grpc-status-details-bin", "x-request-id"])
    expect(exposed).toContain(h);
  expect(((await res.json()) as { models: unknown[] }).models).toHaveLength(1);
});

it("gives other origins nothing", async () => {
  expect((await preflight("http://evil.example")).status).toBe(403);
  const res = await fetch(`${h.url}/kinfer.inference.v1.InferenceService/ListModels`, {
    method: "POST",
    headers: { origin: "http://evil.example", "content-type": "application/json" },
    body: "{}",
  });
  expect(res.headers.get("access-control-allow-origin")).toBeNull();
});
