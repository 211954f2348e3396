/**
 * The admin client: the generated AdminService client with the admin token on every call and typed
 * errors. Reach the gateway's admin port (loopback, or through kubectl port-forward in a cluster).
 */
import { type Client, createClient, type Transport } from "@connectrpc/connect";
import { AdminService } from "../../gen/es/kinfer/admin/v1/admin_pb.js";

export interface AdminClientOptions {
  /** A transport to the admin port. */
  transport: Transport;
  /** The admin bearer token. */
  token: string;
}

/**
 * @example
 * const admin = createAdminClient({ transport: createNodeTransport({ baseUrl: "http://127.0.0.1:8081" }), token });
 * const { models } = await admin.listModels({});
 */
export function createAdminClient(options: AdminClientOptions): Client<typeof AdminService> {
  return createClient(AdminService, {
    ...options.transport,
    unary: (method, signal, timeoutMs, header, input, contextValues) => {
      const h = new Headers(header);
      h.set("authorization", `Bearer ${options.token}`);
      return options.transport.unary(method, signal, timeoutMs, h, input, contextValues);
    },
    stream: (method, signal, timeoutMs, header, input, contextValues) => {
      const h = new Headers(header);
      h.set("authorization", `Bearer ${options.token}`);
      return options.transport.stream(method, signal, timeoutMs, h, input, contextValues);
    },
  });
}
