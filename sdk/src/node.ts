/**
 * Transports for Node.js (@connectrpc/connect-node): gRPC or Connect over HTTP/2 (h2c or TLS).
 */
import type { Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { createKinferClient, type KinferClient, type KinferClientOptions } from "./client.js";

export interface NodeTransportOptions {
  /** The gateway, e.g. http://127.0.0.1:8080 */
  baseUrl: string;
  /** "grpc" (default) or "connect". */
  protocol?: "grpc" | "connect";
}

export function createNodeTransport(options: NodeTransportOptions): Transport {
  return options.protocol === "connect"
    ? createConnectTransport({ baseUrl: options.baseUrl, httpVersion: "2" })
    : createGrpcTransport({ baseUrl: options.baseUrl });
}

/**
 * A client in one call.
 *
 * @example
 * const kinfer = createNodeClient({ baseUrl: "http://127.0.0.1:8080", apiKey, timeoutMs: 30_000 });
 */
export function createNodeClient(
  options: NodeTransportOptions & Omit<KinferClientOptions, "transport">,
): KinferClient {
  const { baseUrl, protocol, ...rest } = options;
  return createKinferClient({
    ...rest,
    transport: createNodeTransport({ baseUrl, ...(protocol ? { protocol } : {}) }),
  });
}
