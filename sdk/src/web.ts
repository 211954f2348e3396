/**
 * Transports for browsers (@connectrpc/connect-web, over fetch): Connect (default) or gRPC-Web.
 */
import type { Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-web";

export interface WebTransportOptions {
  /** The gateway, e.g. https://inference.example.com */
  baseUrl: string;
  /** "connect" (default) or "grpc-web". */
  protocol?: "connect" | "grpc-web";
}

export function createWebTransport(options: WebTransportOptions): Transport {
  return options.protocol === "grpc-web"
    ? createGrpcWebTransport({ baseUrl: options.baseUrl })
    : createConnectTransport({ baseUrl: options.baseUrl });
}
