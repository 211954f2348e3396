/**
 * @kinfer/sdk: typed clients for kinfer's inference and admin APIs, and the generated types of all three
 * APIs. Transports come from "@kinfer/sdk/node" and "@kinfer/sdk/web".
 */

export * as admin from "../../gen/es/kinfer/admin/v1/admin_pb.js";
export * as inference from "../../gen/es/kinfer/inference/v1/inference_pb.js";
export * as scheduling from "../../gen/es/kinfer/scheduling/v1/scheduling_pb.js";
export { type AdminClientOptions, createAdminClient } from "./admin.js";
export {
  createKinferClient,
  type KinferCallOptions,
  type KinferClient,
  type KinferClientOptions,
} from "./client.js";
export { KinferError } from "./errors.js";
export type { Completion, EventStream, StreamEvent } from "./event-stream.js";
