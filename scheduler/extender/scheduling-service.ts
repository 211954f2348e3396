/**
 * The scheduling operations on the scheduling proto's messages: Filter, Prioritize, Bind, Preempt and
 * Explain. The HTTP extender (http-extender.ts) and the Connect SchedulingService both call these, so the
 * two surfaces cannot disagree. Decisions come from placement/ (the filter's pick from the score cache,
 * placement-cache.ts, exactly as the trace replay makes it; prioritize and Explain from evaluate.ts).
 *
 * - Filter: the nodes that fit; those that never can go to FailedAndUnresolvableNodes; every returned
 *   name was in the request. With `filterReturns: "best"` (kinfer-scheduler's default) the filter makes
 *   the choice itself: it scores the nodes that fit and returns only the policy's pick, so kube-scheduler,
 *   left with one feasible node, skips scoring and binds there (HAMi's extender works the same way): one
 *   round trip and a one-name reply instead of two requests naming every node and two large replies, and
 *   the hold below is then exact. When nothing fits, the reply lists every node with its reason (fixed
 *   texts such as "Insufficient whole GPUs", which kube-scheduler counts in the pod's event).
 * - Prioritize: the policy's scores scaled to 0..10, with a single top node, held for the pod.
 * - Bind: chooses the devices on the node kube-scheduler picked, records the placement as assumed (so
 *   concurrent decisions see it), then asks the Binder to annotate the pod with its devices and bind it;
 *   on failure the assumption is dropped.
 * - Preempt: keeps only the candidate nodes where evicting the proposed victims would really make the pod
 *   fit.
 *
 * Why the chosen node is held: kube-scheduler binds asynchronously. It assumes pod A in its own cache and
 * goes on to filter (and prioritize) pod B before A's bind reaches us, and its cache knows nothing of GPU
 * shares. Without a hold, B would be decided on a state without A and the policy's packing would be lost
 * (two shares aimed at the same half-free GPU, one of them then landing elsewhere). So the pick (filter's
 * in "best" mode, prioritize's single top node otherwise, ties broken at random as kube-scheduler would)
 * reserves the pod's devices for a short time, like a scheduler framework Reserve plugin. Bind, filter
 * and prioritize drop a pod's own reservation before deciding again.
 */
import type { DescMessage, MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { LRUCache } from "lru-cache";
import type {
  BindRequest,
  BindResponseSchema,
  ExplainRequest,
  ExplainResponseSchema,
  FilterRequest,
  FilterResponseSchema,
  Node,
  Pod,
  PreemptRequest,
  PreemptResponse,
  PreemptResponseSchema,
  PrioritizeRequest,
  PrioritizeResponseSchema,
} from "../../gen/es/kinfer/scheduling/v1/scheduling_pb.js";
import type { ClusterState } from "../cluster/cluster-state.js";
import { checkFit } from "../cluster/fit.js";
import { copyGpuNode, type DeviceShare, type GpuNode, release } from "../cluster/gpu-node.js";
import { type PodRequest, PodRequestError, readPodRequest } from "../cluster/pod-request.js";
import {
  chooseBest,
  type Evaluation,
  evaluateNodes,
  extenderScores,
  MAX_SCORE,
} from "../placement/evaluate.js";
import { createPlacementCache, type PlacementCache } from "../placement/placement-cache.js";
import type { PlacementPolicy, PolicyName } from "../policies/placement-policy.js";
import { createPolicy, isPolicyName } from "../policies/policies.js";

/** Makes a placement real in Kubernetes: records the devices on the pod, then binds it. */
export interface Binder {
  bind(
    pod: { name: string; namespace: string; uid: string },
    node: string,
    devices: readonly DeviceShare[],
  ): Promise<void>;
}

export interface SchedulingServiceOptions {
  state: ClusterState;
  /** The policy for pods that name none. */
  defaultPolicy: PolicyName;
  /** Needed for Bind; without one, Bind answers an error. */
  binder?: Binder;
  /** How long a bound-but-unconfirmed placement counts. Default 60 s. */
  assumeTtlMs?: number;
  /** How long prioritize's hold on the top node lasts if no bind follows. Default 30 s. */
  reserveTtlMs?: number;
  /**
   * Most holds at once (pods decided but not yet bound). kube-scheduler binds a handful of pods at a time;
   * the bound keeps a caller that sends filter after filter from reserving every GPU. Past it, the
   * filter still answers but holds nothing. Default 64.
   */
  maxHolds?: number;
  /** Tie-breaking among equally good nodes; Math.random by default. */
  random?: () => number;
  /** "all" (default): filter returns every node that fits; "best": only the policy's choice. */
  filterReturns?: "all" | "best";
  /** Decision metrics. */
  onDecision?: (verb: string, result: string, seconds: number) => void;
  /** Called when a hold is refused because maxHolds are held. */
  onHoldRefused?: () => void;
}

/** Replies are plain init objects: cheap to build for thousands of nodes; Connect and the HTTP JSON writer take them. */
type Reply<Desc extends DescMessage> = MessageInitShape<Desc>;

export interface SchedulingService {
  filter(req: FilterRequest): Reply<typeof FilterResponseSchema>;
  prioritize(req: PrioritizeRequest): Reply<typeof PrioritizeResponseSchema>;
  bind(req: BindRequest): Promise<Reply<typeof BindResponseSchema>>;
  preempt(req: PreemptRequest): Reply<typeof PreemptResponseSchema>;
  explain(req: ExplainRequest): Reply<typeof ExplainResponseSchema>;
  /** The filter's node evaluations: worked out, or read from the score cache (for /metrics). */
  readonly evaluations: PlacementCache["evaluations"];
  /** Pods held now (decided, not yet bound). */
  readonly holds: number;
  /** Called when a hold is refused because maxHolds pods are held (for /metrics). */
  onHoldRefused: (() => void) | undefined;
}

export function createSchedulingService(options: SchedulingServiceOptions): SchedulingService {
  const { state } = options;
  const policies = new Map<PolicyName, PlacementPolicy>();
  const policyOf = (name: PolicyName) => {
    let p = policies.get(name);
    if (p === undefined) {
      p = createPolicy(name);
      // Start from the mix running in the cluster, so that a (re)started scheduler does not learn it
      // again from scratch (only the fragmentation policy learns).
      for (const pod of state.pods()) p.observe(pod.request);
      policies.set(name, p);
    }
    return p;
  };
  /** Pods seen in filter/prioritize, so that Bind (which gets names only) knows what they asked for. */
  const pending = new LRUCache<string, { request: PodRequest; key: string; policy: PolicyName }>({
    max: 50_000,
  });
  const observed = new LRUCache<string, true>({ max: 100_000 });

  function read(pod: Pod | undefined): { request: PodRequest; policy: PolicyName; key: string; uid: string } {
    if (pod === undefined) throw new PodRequestError("the request has no Pod");
    const request = readPodRequest(pod);
    const name = request.policy === "" ? options.defaultPolicy : request.policy;
    if (!isPolicyName(name)) throw new PodRequestError(`unknown placement policy "${name}"`);
    const uid = pod.metadata?.uid ?? "";
    const key = `${pod.metadata?.namespace ?? ""}/${pod.metadata?.name ?? ""}`;
    if (uid !== "") pending.set(uid, { request, key, policy: name });
    // The fragmentation policy learns the pod mix: count each pod once, however often it is retried.
    if (uid === "" || !observed.has(uid)) {
      if (uid !== "") observed.set(uid, true);
      policyOf(name).observe(request);
    }
    return { request, policy: name, key, uid };
  }

  const random = options.random ?? Math.random;

  /** Pods held now (uid -> when the hold lapses), for the bound on holds. */
  const holds = new Map<string, number>();
  const maxHolds = options.maxHolds ?? 64;
  const reserveTtlMs = options.reserveTtlMs ?? 30_000;

  /** Holds the pod's devices on its chosen node until bind (see the module comment), within maxHolds. */
  function hold(pod: ReturnType<typeof read>, best: Evaluation): void {
    if (pod.uid === "") return;
    const t = Date.now();
    for (const [uid, until] of holds) if (until <= t) holds.delete(uid);
    if (!holds.has(pod.uid) && holds.size >= maxHolds) {
      (options.onHoldRefused ?? self.onHoldRefused)?.();
      return;
    }
    const held = { uid: pod.uid, key: pod.key, node: best.node.name, request: pod.request };
    state.assume(held, best.devices, reserveTtlMs);
    holds.set(pod.uid, t + reserveTtlMs);
  }

  /** A new scheduling attempt: the pod's reservation from an earlier one must not count against it. */
  function readAttempt(pod: Pod | undefined): ReturnType<typeof read> {
    const attempt = read(pod);
    if (attempt.uid !== "") {
      state.unassume(attempt.uid);
      holds.delete(attempt.uid);
    }
    return attempt;
  }

  /** Scores per pod shape, refreshed only for nodes that changed (placement-cache.ts). */
  const placements = createPlacementCache();

  /**
   * The last NodeNames list resolved: kube-scheduler sends the same list for pod after pod, and the
   * parser hands over the same array when the text repeats (extender-json.ts), so resolving 5,000 names
   * again is skipped while the node set is unchanged.
   */
  let lastResolved:
    | { names: readonly string[]; version: number; known: GpuNode[]; unknown: string[] }
    | undefined;

  /**
   * The cached nodes a request names (NodeNames, or the names of the Nodes it carries when kube-scheduler
   * runs the extender without nodeCacheCapable). A request's Node objects are never taken into the cache:
   * the cache is the informers' (or the local cluster file's), so a caller cannot resize or invent nodes.
   */
  function nodesOf(nodeNames: readonly string[], nodes: readonly Node[] | undefined) {
    const names =
      nodes !== undefined && nodes.length > 0 ? nodes.map((n) => n.metadata?.name ?? "") : nodeNames;
    if (lastResolved?.names === names && lastResolved.version === state.nodesVersion) {
      return { known: lastResolved.known, unknown: lastResolved.unknown };
    }
    const known: GpuNode[] = [];
    const unknown: string[] = [];
    for (const name of names) {
      const node = state.nodes.get(name);
      if (node === undefined) unknown.push(name);
      else known.push(node);
    }
    lastResolved = { names, version: state.nodesVersion, known, unknown };
    return { known, unknown };
  }

  function timed<T>(verb: string, result: (r: T) => string, fn: () => T): T {
    const started = performance.now();
    const out = fn();
    options.onDecision?.(verb, result(out), (performance.now() - started) / 1000);
    return out;
  }

  const self: SchedulingService = {
    onHoldRefused: undefined,
    get holds() {
      const t = Date.now();
      let n = 0;
      for (const until of holds.values()) if (until > t) n++;
      return n;
    },
    evaluations: placements.evaluations,
    filter: (req) =>
      timed(
        "filter",
        (r) => (r.error ? "error" : (r.nodeNames?.length ?? 0) > 0 ? "fit" : "no-fit"),
        () => {
          let pod: ReturnType<typeof read>;
          try {
            pod = readAttempt(req.pod);
          } catch (err) {
            if (err instanceof PodRequestError) return { error: err.message };
            throw err;
          }
          const { known, unknown } = nodesOf(req.nodeNames, req.nodes?.items);
          if (options.filterReturns === "best") {
            const best = placements.pickBest(known, pod.request, policyOf(pod.policy), random);
            if (best !== undefined) {
              hold(pod, best);
              const init: MessageInitShape<typeof FilterResponseSchema> = { nodeNames: [best.node.name] };
              if (req.nodes !== undefined)
                init.nodes = { items: req.nodes.items.filter((n) => n.metadata?.name === best.node.name) };
              return init;
            }
            // Nothing fits: answer with every node's reason, below.
          }
          const failed: Record<string, string> = {};
          const unresolvable: Record<string, string> = {};
          for (const name of unknown) failed[name] = "not in kinfer-scheduler's cache yet";
          const fitting: string[] = [];
          for (const node of known) {
            const fit = checkFit(node, pod.request);
            if (fit.fits) fitting.push(node.name);
            else if (fit.unresolvable) unresolvable[node.name] = fit.reason;
            else failed[node.name] = fit.reason;
          }
          const init: MessageInitShape<typeof FilterResponseSchema> = {
            nodeNames: fitting,
            failedNodes: failed,
            failedAndUnresolvableNodes: unresolvable,
          };
          if (req.nodes !== undefined) {
            const keep = new Set(fitting);
            init.nodes = { items: req.nodes.items.filter((n) => keep.has(n.metadata?.name ?? "")) };
          }
          return init;
        },
      ),

    prioritize: (req) =>
      timed(
        "prioritize",
        () => "ok",
        () => {
          let pod: ReturnType<typeof read>;
          try {
            pod = readAttempt(req.pod);
          } catch (err) {
            // A failing prioritize is ignored by kube-scheduler: score every node 0.
            if (err instanceof PodRequestError) {
              return { hostPriorities: req.nodeNames.map((host) => ({ host, score: 0 })) };
            }
            throw err;
          }
          const { known, unknown } = nodesOf(req.nodeNames, req.nodes?.items);
          const evaluations = evaluateNodes(known, pod.request, policyOf(pod.policy));
          const scores = extenderScores(evaluations);
          const best = chooseBest(evaluations, random);
          if (best !== undefined) {
            // One node at the top, and the pod's devices held there until bind (see the module comment).
            for (const s of scores)
              if (s.score === MAX_SCORE && s.host !== best.node.name) s.score = MAX_SCORE - 1;
            hold(pod, best);
          }
          return { hostPriorities: [...scores, ...unknown.map((host) => ({ host, score: 0 }))] };
        },
      ),

    async bind(req) {
      const started = performance.now();
      const done = (error: string) => {
        options.onDecision?.("bind", error === "" ? "bound" : "error", (performance.now() - started) / 1000);
        return { error };
      };
      if (options.binder === undefined) return done("kinfer-scheduler has no binder configured");
      const pod = pending.get(req.podUid);
      if (pod === undefined)
        return done(`pod ${req.podNamespace}/${req.podName} was not filtered by kinfer-scheduler`);
      const node = state.nodes.get(req.node);
      if (node === undefined) return done(`unknown node ${req.node}`);
      state.unassume(req.podUid); // prioritize's hold, possibly on another node
      holds.delete(req.podUid);
      const best = chooseBest(evaluateNodes([node], pod.request, policyOf(pod.policy)), () => 0);
      if (best === undefined) return done(`pod ${pod.key} no longer fits node ${req.node}`);
      const placed = { uid: req.podUid, key: pod.key, node: req.node, request: pod.request };
      state.assume(placed, best.devices, options.assumeTtlMs ?? 60_000);
      try {
        await options.binder.bind(
          { name: req.podName, namespace: req.podNamespace, uid: req.podUid },
          req.node,
          best.devices,
        );
      } catch (err) {
        state.removePod(req.podUid);
        return done(`binding failed: ${(err as Error).message}`);
      }
      pending.delete(req.podUid);
      return done("");
    },

    preempt: (req) =>
      timed(
        "preempt",
        () => "ok",
        () => {
          let pod: ReturnType<typeof read>;
          try {
            pod = read(req.pod);
          } catch (err) {
            if (err instanceof PodRequestError) return {};
            throw err;
          }
          const out: Record<string, PreemptResponse["nodeNameToMetaVictims"][string]> = {};
          const candidates = Object.entries(req.nodeNameToMetaVictims).map(
            ([n, v]) => [n, v.pods.map((p) => p.uid), v] as const,
          );
          for (const [name, uids, victims] of candidates) {
            const node = state.nodes.get(name);
            if (node === undefined) continue;
            // Simulate the evictions on a copy of the node: only victims that really hold resources there.
            const copy = copyGpuNode(node);
            for (const uid of new Set(uids)) {
              const victim = state.podOf(uid);
              const devices = state.devicesOf(uid);
              if (victim === undefined || victim.node !== name || devices === undefined) continue;
              release(copy, victim.request.cpuMilli, victim.request.memMiB, devices);
            }
            if (checkFit(copy, pod.request).fits) out[name] = victims;
          }
          return { nodeNameToMetaVictims: out };
        },
      ),

    explain(req) {
      let pod: ReturnType<typeof read>;
      try {
        pod = read(req.pod);
      } catch (err) {
        if (err instanceof PodRequestError) throw new ConnectError(err.message, Code.InvalidArgument);
        throw err;
      }
      const policyName = req.policy === "" ? pod.policy : req.policy;
      if (!isPolicyName(policyName))
        throw new ConnectError(`unknown policy "${policyName}"`, Code.InvalidArgument);
      const names = req.nodeNames.length > 0 ? req.nodeNames : [...state.nodes.keys()];
      const { known } = nodesOf(names, undefined);
      const evaluations = evaluateNodes(known, pod.request, policyOf(policyName), true);
      const scores = new Map(extenderScores(evaluations).map((s) => [s.host, s.score]));
      const order = (a: Evaluation, b: Evaluation) =>
        Number(b.fit.fits) - Number(a.fit.fits) ||
        (b.fit.fits ? b.score - a.score : a.node.name.localeCompare(b.node.name));
      const sorted = [...evaluations].sort(order);
      return {
        policy: policyName,
        request: {
          gpus: pod.request.gpus,
          gpuMilli: pod.request.gpuMilli,
          acceptedModels: [...pod.request.models],
        },
        chosenNode: sorted[0]?.fit.fits ? sorted[0].node.name : "",
        nodes: sorted.map((e) => ({
          node: e.node.name,
          fits: e.fit.fits,
          reason: e.fit.reason,
          unresolvable: e.fit.unresolvable,
          score: scores.get(e.node.name) ?? 0,
          rawScore: Number.isNaN(e.score) ? 0 : e.score,
          freeGpuMilli: [...e.node.free],
        })),
      };
    },
  };
  return self;
}
