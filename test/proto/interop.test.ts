/**
 * Wire agreement between the two generated code trees: a trivial InferenceService built from gen/es and
 * served by connect-node over h2c, called by a Connect client (gen/es) and by a @grpc/grpc-js client
 * (gen/grpc-js, ts-proto). Both must see the same events, byte for byte, and the same errors with the
 * same ErrorDetail, for unary calls, server streams, and streams that fail before and after their start.
 */
import { create, equals, fromBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type ConnectRouter, createClient } from "@connectrpc/connect";
import { findTrailerError } from "@connectrpc/connect/protocol-grpc";
import { connectNodeAdapter, createConnectTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  ErrorDetailSchema,
  ErrorReason,
  FinishReason,
  type GenerateRequestSchema,
  type GenerateResponse,
  GenerateResponseSchema,
  InferenceService,
} from "../../gen/es/kinfer/inference/v1/inference_pb.js";
import * as tsProto from "../../gen/grpc-js/kinfer/inference/v1/inference.js";
import { startHttp2Server, type TestHttp2Server } from "../helpers/http2-server.js";

/** A trivial service: streams the prompt back word by word; "fail-early" and "fail-late" fail on purpose. */
function routes(router: ConnectRouter) {
  router.service(InferenceService, {
    async *generate(req) {
      if (req.prompt === "fail-early") {
        throw new ConnectError("slow down", Code.ResourceExhausted, undefined, [
          {
            desc: ErrorDetailSchema,
            value: { reason: ErrorReason.RATE_LIMITED, retryAfter: durationFromMs(2500) },
          },
        ]);
      }
      yield { event: { case: "start", value: { requestId: "req-1", model: req.model, version: "stable" } } };
      const words = req.prompt.split(" ");
      for (const [i, word] of words.entries()) {
        if (req.prompt.startsWith("fail-late") && i === 2) {
          throw new ConnectError("replica failed", Code.Unavailable, undefined, [
            { desc: ErrorDetailSchema, value: { reason: ErrorReason.UPSTREAM_FAILED } },
          ]);
        }
        yield { event: { case: "delta", value: { text: `${word} `, tokenCount: 1 } } };
      }
      yield {
        event: {
          case: "finish",
          value: {
            finishReason: FinishReason.STOP,
            usage: { promptTokens: words.length, completionTokens: words.length, cachedTokens: 0 },
            timeToFirstToken: durationFromMs(12),
            totalTime: durationFromMs(34),
          },
        },
      };
    },
    async *chat() {
      yield { event: { case: "delta", value: { text: "hi", tokenCount: 1 } } };
    },
    listModels() {
      return {
        models: [{ name: "llama", versions: ["canary", "stable"], maxContextTokens: 8192, available: true }],
      };
    },
  });
}

interface Outcome {
  events: GenerateResponse[];
  error?: ConnectError;
}

let server: TestHttp2Server;
let grpcClient: tsProto.InferenceServiceClient;

beforeAll(async () => {
  server = await startHttp2Server(connectNodeAdapter({ routes }));
  grpcClient = new tsProto.InferenceServiceClient(server.authority, grpc.credentials.createInsecure());
});

afterAll(async () => {
  grpcClient.close();
  await server.close();
});

function connectClient() {
  // The Connect protocol over HTTP/2, as the SDK uses it in Node (this test server speaks h2c only).
  return createClient(
    InferenceService,
    createConnectTransport({ baseUrl: server.baseUrl, httpVersion: "2" }),
  );
}

async function viaConnect(req: MessageInitShape<typeof GenerateRequestSchema>): Promise<Outcome> {
  const events: GenerateResponse[] = [];
  try {
    for await (const event of connectClient().generate(req)) events.push(event);
    return { events };
  } catch (err) {
    return { events, error: ConnectError.from(err) };
  }
}

/** Calls Generate through grpc-js; events are re-read with protobuf-es from ts-proto's own encoding. */
function viaGrpcJs(req: tsProto.GenerateRequest): Promise<Outcome> {
  return new Promise((resolve) => {
    const events: GenerateResponse[] = [];
    let settled = false;
    const call = grpcClient.generate(req);
    call.on("data", (msg: tsProto.GenerateResponse) => {
      events.push(fromBinary(GenerateResponseSchema, tsProto.GenerateResponse.encode(msg).finish()));
    });
    // grpc-js may emit "error" and then "end": settle once.
    call.on("error", (err: grpc.ServiceError) => {
      if (settled) return;
      settled = true;
      resolve({ events, error: grpcErrorToConnect(err) });
    });
    call.on("end", () => {
      if (settled) return;
      settled = true;
      resolve({ events });
    });
  });
}

/** Reads a grpc-js error's status and details the way any gRPC client does, from the trailers. */
function grpcErrorToConnect(err: grpc.ServiceError): ConnectError {
  const trailer = new Headers({
    "grpc-status": String(err.code),
    "grpc-message": encodeURIComponent(err.details),
  });
  const details = err.metadata.get("grpc-status-details-bin")[0];
  if (details instanceof Buffer) trailer.set("grpc-status-details-bin", details.toString("base64"));
  const parsed = findTrailerError(trailer);
  if (parsed === undefined) throw new Error("grpc-js error without a status");
  return parsed;
}

describe("Connect and grpc-js clients agree with a connect-node server", () => {
  const request = { model: "llama", prompt: "one two three four" };

  it("stream the same events", async () => {
    const [a, b] = await Promise.all([
      viaConnect(request),
      viaGrpcJs(tsProto.GenerateRequest.fromPartial(request)),
    ]);
    expect(a.error).toBeUndefined();
    expect(b.error).toBeUndefined();
    expect(a.events).toHaveLength(6);
    expect(b.events).toHaveLength(a.events.length);
    for (const [i, event] of a.events.entries()) {
      expect(equals(GenerateResponseSchema, event, b.events[i] ?? create(GenerateResponseSchema))).toBe(true);
    }
    const finish = a.events.at(-1)?.event;
    expect(finish?.case).toBe("finish");
    if (finish?.case === "finish") {
      expect(finish.value.usage?.completionTokens).toBe(4);
      expect(Number(finish.value.timeToFirstToken?.nanos)).toBe(12_000_000);
    }
  });

  it("fail before the first event with the same code and ErrorDetail", async () => {
    const req = { model: "llama", prompt: "fail-early" };
    const [a, b] = await Promise.all([viaConnect(req), viaGrpcJs(tsProto.GenerateRequest.fromPartial(req))]);
    for (const outcome of [a, b]) {
      expect(outcome.events).toHaveLength(0);
      expect(outcome.error?.code).toBe(Code.ResourceExhausted);
      expect(outcome.error?.rawMessage).toBe("slow down");
      const [detail] = outcome.error?.findDetails(ErrorDetailSchema) ?? [];
      expect(detail?.reason).toBe(ErrorReason.RATE_LIMITED);
      expect(detail?.retryAfter?.seconds).toBe(2n);
      expect(detail?.retryAfter?.nanos).toBe(500_000_000);
    }
  });

  it("fail mid-stream after the partial text with the same code and ErrorDetail", async () => {
    const req = { model: "llama", prompt: "fail-late a b c" };
    const [a, b] = await Promise.all([viaConnect(req), viaGrpcJs(tsProto.GenerateRequest.fromPartial(req))]);
    for (const outcome of [a, b]) {
      expect(outcome.events.map((e) => e.event.case)).toEqual(["start", "delta", "delta"]);
      expect(outcome.error?.code).toBe(Code.Unavailable);
      expect(outcome.error?.findDetails(ErrorDetailSchema)[0]?.reason).toBe(ErrorReason.UPSTREAM_FAILED);
    }
  });

  it("answer unary calls identically", async () => {
    const viaEs = await connectClient().listModels({});
    const viaTs = await new Promise<tsProto.ListModelsResponse>((resolve, reject) =>
      grpcClient.listModels({}, (err, res) => (err ? reject(err) : resolve(res))),
    );
    expect(tsProto.ListModelsResponse.toJSON(viaTs)).toEqual({
      models: [{ name: "llama", versions: ["canary", "stable"], maxContextTokens: 8192, available: true }],
    });
    expect(viaEs.models[0]?.versions).toEqual(viaTs.models[0]?.versions);
  });
});
