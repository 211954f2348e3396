/**
 * Transports for Node.js (@connectrpc/connect-node): gRPC or Connect over HTTP/2 (h2c or TLS).
 */
import type { Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";

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
