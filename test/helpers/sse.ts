/** Reads a Server-Sent Events response body into its `data:` payloads, with eventsource-parser. */
import { createParser } from "eventsource-parser";

/** Every event's data, in order, until the body ends. Rejects if the connection breaks. */
export async function readSseData(response: Response): Promise<string[]> {
  const data: string[] = [];
  const parser = createParser({ onEvent: (event) => data.push(event.data) });
  const decoder = new TextDecoder();
  if (response.body === null) return data;
  for await (const chunk of response.body) parser.feed(decoder.decode(chunk as Uint8Array, { stream: true }));
  return data;
}

/** POSTs JSON and returns the raw response. */
export function postJson(url: string, body: unknown, init: RequestInit = {}): Promise<Response> {
  return fetch(url, {
    ...init,
    method: "POST",
    headers: { "content-type": "application/json", ...(init.headers as Record<string, string> | undefined) },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
}
