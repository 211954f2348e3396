/**
 * The result of generate, chat and respond: an async iterable of events (start, delta, finish) that can also be
 * collected into the whole text and usage. Iterating twice is an error: the stream is consumed once.
 */

import type {
  ChatResponse,
  GenerateResponse,
  RespondResponse,
  StreamFinish,
  StreamStart,
} from "../../gen/es/kinfer/inference/v1/inference_pb.js";
import { KinferError } from "./errors.js";

/** One event of a stream. */
export type StreamEvent = (GenerateResponse | ChatResponse | RespondResponse)["event"];

/** What collect() returns. */
export interface Completion {
  /** The generated text. */
  readonly text: string;
  readonly start: StreamStart | undefined;
  readonly finish: StreamFinish | undefined;
}

export interface EventStream extends AsyncIterable<NonNullable<StreamEvent>> {
  /** Reads the whole stream; rejects with KinferError. */
  collect(): Promise<Completion>;
  /** The text deltas only. */
  text(): AsyncIterable<string>;
}

export function eventStream(
  source: () => AsyncIterable<GenerateResponse | ChatResponse | RespondResponse>,
): EventStream {
  let used = false;
  async function* events() {
    if (used) throw new Error("a stream can be read once");
    used = true;
    try {
      for await (const res of source()) if (res.event.case !== undefined) yield res.event;
    } catch (err) {
      throw KinferError.from(err);
    }
  }
  return {
    [Symbol.asyncIterator]: () => events()[Symbol.asyncIterator](),
    async collect() {
      let text = "";
      let start: StreamStart | undefined;
      let finish: StreamFinish | undefined;
      for await (const e of events()) {
        if (e.case === "start") start = e.value;
        else if (e.case === "delta") text += e.value.text;
        else if (e.case === "finish") finish = e.value;
      }
      return { text, start, finish };
    },
    async *text() {
      for await (const e of events()) if (e.case === "delta") yield e.value.text;
    },
  };
}
