/**
 * Transports for browsers (@connectrpc/connect-web, over fetch): Connect (default) or gRPC-Web.
 */
import type { Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-web";
import { createKinferClient, type KinferClient, type KinferClientOptions } from "./client.js";

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

/** A client in one call, for browsers. */
export function createWebClient(
  options: WebTransportOptions & Omit<KinferClientOptions, "transport">,
): KinferClient {
  const { baseUrl, protocol, ...rest } = options;
  return createKinferClient({
    ...rest,
    transport: createWebTransport({ baseUrl, ...(protocol ? { protocol } : {}) }),
  });
}
