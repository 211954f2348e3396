/**
 * First tokens first: continuing streams wait in a queue released a slice per event-loop turn, so that
 * I/O arriving meanwhile (a new request, another stream's first token) runs between slices, not after the
 * whole burst; and every waiting stream is released, in order.
 */
import { connect, createServer } from "node:net";
import { expect, it } from "vitest";
import { afterFirstTokens } from "../../../server/relay/token-priority.js";

it("releases every waiter in order, and lets I/O in after one slice, not after the burst", async () => {
  // A real socket: its data is I/O the event loop polls, like a first token arriving from a replica.
  const server = createServer((socket) => socket.write("first token"));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as { port: number }).port;
  const order: string[] = [];
  const socket = connect(port, "127.0.0.1");
  await new Promise((resolve) => socket.once("connect", resolve));
  // The burst: 256 streams past their first token, each waiting for its turn, queued just before the
  // first token's bytes arrive.
  const waiters = Array.from(
    { length: 256 },
    (_, i) =>
      new Promise<void>((resolve) =>
        afterFirstTokens(() => {
          order.push(`stream ${i}`);
          // Each stream's relaying work: about 20 µs of CPU.
          const until = performance.now() + 0.02;
          while (performance.now() < until);
          resolve();
        }),
      ),
  );
  const firstToken = new Promise<void>((resolve) =>
    socket.once("data", () => {
      order.push("first token");
      resolve();
    }),
  );
  await Promise.all([...waiters, firstToken]);
  socket.destroy();
  server.close();
  const streams = order.filter((x) => x !== "first token");
  expect(streams).toEqual(Array.from({ length: 256 }, (_, i) => `stream ${i}`));
  // The first token got in before most of the burst was relayed.
  expect(order.indexOf("first token")).toBeLessThan(128);
});
