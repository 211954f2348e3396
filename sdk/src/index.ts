/**
 * @kinfer/sdk: the generated types and service descriptors of kinfer's three APIs, one namespace per API
 * (admin and inference both have a ListModelsRequest). Clients, transports and helpers come with the SDK
 * issue and are built on these; nothing here is hand-written protocol code.
 */
export * as admin from "../../gen/es/kinfer/admin/v1/admin_pb.js";
export * as inference from "../../gen/es/kinfer/inference/v1/inference_pb.js";
export * as scheduling from "../../gen/es/kinfer/scheduling/v1/scheduling_pb.js";
