/**
 * The seam between discovery and routing: an EndpointSource says which replica URLs serve which model
 * version, and whether each is ready. The static source reads them from the config file; the Kubernetes
 * source (EndpointSlices) implements the same interface. Sources never route; the routing table never
 * talks to Kubernetes.
 */

/** One replica endpoint. */
export interface Endpoint {
  readonly model: string;
  readonly version: string;
  /** Base URL, e.g. http://10.0.3.7:8000 */
  readonly url: string;
  /** Whether it may take traffic (EndpointSlice "ready"; static endpoints are always ready). */
  readonly ready: boolean;
}

export interface EndpointSource {
  /** "static" or "kubernetes". */
  readonly name: string;
  /** The endpoints now. */
  endpoints(): readonly Endpoint[];
  /** Calls `listener` after every change; returns a function that unsubscribes. */
  onChange(listener: () => void): () => void;
  /** Stops watching. */
  close(): Promise<void>;
}
