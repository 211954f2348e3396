/**
 * gRPC server reflection (grpc.reflection.v1 and v1alpha) from the file descriptors that protoc-gen-es
 * embeds in gen/es, so that `buf curl`, grpcurl and grpcui can list and call the gateway's services with
 * no local schema. connect-es has no reflection of its own (connect-es issue #507), and @grpc/reflection
 * works only with a grpc-js server: hence this small implementation.
 */
import { createRegistry, type DescFile, toBinary } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import type { ConnectRouter } from "@connectrpc/connect";
import * as v1 from "../../gen/es/grpc/reflection/v1/reflection_pb.js";
import * as v1alpha from "../../gen/es/grpc/reflection/v1alpha/reflection_pb.js";

const NOT_FOUND = 5;
const UNIMPLEMENTED = 12;

/** Every file `files` depend on, themselves included, each once, dependencies first. */
function closure(files: readonly DescFile[]): DescFile[] {
  const out: DescFile[] = [];
  const seen = new Set<string>();
  const visit = (f: DescFile) => {
    if (seen.has(f.name)) return;
    seen.add(f.name);
    for (const d of f.dependencies) visit(d);
    out.push(f);
  };
  for (const f of files) visit(f);
  return out;
}

type Request = v1.ServerReflectionRequest | v1alpha.ServerReflectionRequest;
/** A response without `originalRequest`, which each protocol version adds with its own message type. */
type ResponseInit = {
  validHost: string;
  messageResponse:
    | { case: "fileDescriptorResponse"; value: { fileDescriptorProto: Uint8Array[] } }
    | { case: "listServicesResponse"; value: { service: { name: string }[] } }
    | { case: "errorResponse"; value: { errorCode: number; errorMessage: string } };
};

/**
 * Registers reflection for `files` (the protos of the services the server offers); `services` are the
 * fully-qualified names list_services reports.
 */
export function registerReflectionService(
  router: ConnectRouter,
  files: readonly DescFile[],
  services: readonly string[],
): void {
  const all = closure(files);
  const registry = createRegistry(...all);
  const byName = new Map(all.map((f) => [f.name, f]));
  const encoded = new Map(all.map((f) => [f.name, toBinary(FileDescriptorProtoSchema, f.proto)]));

  /** The file and its dependencies, encoded (the client may already have some; sending all is allowed). */
  const withDeps = (file: DescFile) => closure([file]).map((f) => encoded.get(f.name) as Uint8Array);

  function fileOfSymbol(symbol: string): DescFile | undefined {
    const type = registry.get(symbol);
    if (type !== undefined) return type.file;
    // A method: package.Service.Method
    const dot = symbol.lastIndexOf(".");
    const service = dot > 0 ? registry.getService(symbol.slice(0, dot)) : undefined;
    return service?.methods.some((m) => m.name === symbol.slice(dot + 1)) ? service.file : undefined;
  }

  function answer(req: Request): ResponseInit {
    const base = { validHost: req.host };
    const error = (errorCode: number, errorMessage: string): ResponseInit => ({
      ...base,
      messageResponse: { case: "errorResponse", value: { errorCode, errorMessage } },
    });
    const files = (file: DescFile | undefined, what: string): ResponseInit =>
      file === undefined
        ? error(NOT_FOUND, `${what} not found`)
        : {
            ...base,
            messageResponse: {
              case: "fileDescriptorResponse",
              value: { fileDescriptorProto: withDeps(file) },
            },
          };
    const m = req.messageRequest;
    switch (m.case) {
      case "listServices":
        return {
          ...base,
          messageResponse: {
            case: "listServicesResponse",
            value: { service: services.map((name) => ({ name })) },
          },
        };
      case "fileByFilename":
        return files(byName.get(m.value), `file "${m.value}"`);
      case "fileContainingSymbol":
        return files(fileOfSymbol(m.value), `symbol "${m.value}"`);
      case "fileContainingExtension":
      case "allExtensionNumbersOfType":
        return error(UNIMPLEMENTED, "extensions are not supported");
      default:
        return error(UNIMPLEMENTED, "empty request");
    }
  }

  router.service(v1.ServerReflection, {
    async *serverReflectionInfo(requests) {
      for await (const req of requests) yield { ...answer(req), originalRequest: req };
    },
  });
  router.service(v1alpha.ServerReflection, {
    async *serverReflectionInfo(requests) {
      for await (const req of requests) yield { ...answer(req), originalRequest: req };
    },
  });
}
