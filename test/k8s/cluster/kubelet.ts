/**
 * A kubelet stand-in for the cluster tests: it runs the pods the schedulers bind to the kwok nodes as
 * real processes, the way their pod specs say, and reports them to the cluster through kwok.
 *
 * For each pod bound to one of its nodes it
 * 1. gives the pod an address from its node's pod CIDR and a network namespace (pod-network.ts);
 * 2. materialises its volumes: ConfigMaps and Secrets (waiting, as a kubelet does, until they exist),
 *    emptyDirs, and projected volumes, including the ServiceAccount token volume the admission plugin
 *    adds (a TokenRequest bound to the pod, the cluster's CA from kube-root-ca.crt, the namespace);
 * 3. starts every container (container.ts) from its image (images.ts) with the command, args, env
 *    (values, Secret and ConfigMap keys, fields), volume mounts and securityContext (user, read-only
 *    root, no privilege escalation, dropped capabilities) of the spec, plus what a kubelet adds: the
 *    KUBERNETES_SERVICE_HOST/PORT of the apiserver (no kube-proxy here: its own address) and HOSTNAME;
 * 4. runs the startup and readiness probes (httpGet, http or https, the spec's timeoutSeconds; every
 *    200 ms rather than periodSeconds, to keep the tests short) and, once every container is ready,
 *    annotates the pod with its address: kwok's pod-ready-live stage (kwok-stages.yaml) then sets it
 *    Running and Ready with that podIP, and the EndpointSlice controller publishes it.
 * When the pod is deleted (graceful deletion sets deletionTimestamp) it runs each container's preStop
 * (sleep, httpGet, or exec in the container's namespaces and root), sends SIGTERM, waits up to the grace
 * period (SIGKILL after it), removes the
 * network namespace and deletes the pod object with grace 0, as a kubelet does. A container that exits
 * on its own is restarted with a doubling backoff (restartPolicy Always) and counted.
 *
 * Not done (no test needs them yet): liveness probes, readiness after the first success (a pod stays
 * Ready once it is), init containers, service links, $(VAR) expansion, volume types
 * other than those above. A pod that needs one fails loudly (recorded in `failures`).
 */
import { spawn } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  CoreV1Api,
  type KubeConfig,
  makeInformer,
  PatchStrategy,
  setHeaderOptions,
  type V1Container,
  type V1Pod,
  type V1Probe,
} from "@kubernetes/client-node";
import { Agent, request } from "undici";
import { superviseInformer } from "../../../common/kube/supervise-informer.js";
import { type Container, type ContainerMount, startContainer } from "./container.js";
import { resolveImage } from "./images.js";
import type { PodNetwork } from "./pod-network.js";

/** The annotation kwok's pod-ready-live stage waits for: the pod's address, once it is ready. */
export const POD_IP_ANNOTATION = "kinfer.test/pod-ip";

/** What happened to one container at a pod's termination. */
export interface ContainerTermination {
  readonly pod: string;
  readonly container: string;
  /** From SIGTERM to exit. */
  readonly stopMs: number;
  /** SIGKILL was needed: the grace period ran out. */
  readonly killed: boolean;
  readonly exitCode: number | null;
}

export interface RunningContainer {
  readonly name: string;
  readonly spec: V1Container;
  current: Container;
  restarts: number;
  ready: boolean;
}

export interface RunningPod {
  readonly uid: string;
  readonly namespace: string;
  readonly name: string;
  readonly node: string;
  readonly ip: string;
  readonly netns: string;
  readonly dir: string;
  readonly containers: RunningContainer[];
  readonly labels: Readonly<Record<string, string>>;
  /** When the kubelet saw the pod bound, and when every container was ready (ms since the epoch). */
  readonly boundAt: number;
  readyAt?: number;
  terminating: boolean;
}

export interface Kubelet {
  /** Pods with processes, by uid. */
  readonly pods: ReadonlyMap<string, RunningPod>;
  /** Every container termination so far, in order. */
  readonly terminations: readonly ContainerTermination[];
  /** Containers that exited on their own: "<ns>/<pod>/<container>: <exit> <output tail>". */
  readonly crashes: readonly string[];
  /** Pods that could not be run, with the reason. */
  readonly failures: readonly string[];
  /** The pod named `namespace/name`, when it runs here. */
  find(namespace: string, name: string): RunningPod | undefined;
  stop(): Promise<void>;
}

export interface KubeletOptions {
  /** Admin credentials: the kubelet's own API calls (its node's pods, their volumes, tokens). */
  readonly kc: KubeConfig;
  readonly network: PodNetwork;
  /** Node name -> its pod CIDR (a /24). */
  readonly nodes: ReadonlyMap<string, string>;
  /** Where pods' volumes and logs go. */
  readonly dir: string;
  /** The built Kubernetes binaries (kube-scheduler for its image). */
  readonly bin: string;
  /** The apiserver as pods reach it. */
  readonly apiserver: { readonly host: string; readonly port: number };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, Math.max(0, ms)));
const insecure = new Agent({ connect: { rejectUnauthorized: false } });

/** 404 from the API: the object does not exist. */
const isNotFound = (err: unknown) => (err as { code?: number }).code === 404;

export function startKubelet(options: KubeletOptions): Promise<Kubelet> {
  const { kc, network } = options;
  const core = kc.makeApiClient(CoreV1Api);
  const pods = new Map<string, RunningPod>();
  const terminations: ContainerTermination[] = [];
  const crashes: string[] = [];
  const failures: string[] = [];
  /** uid -> the pod's chain of work (start, terminate), so that events for one pod run in order. */
  const work = new Map<string, Promise<void>>();
  const starting = new Set<string>();
  /** Pods whose deletion began (deletionTimestamp set, or the object is gone). */
  const deleting = new Set<string>();
  /** Addresses in use per node. */
  const used = new Map<string, Set<number>>();
  let stopped = false;

  const enqueue = (uid: string, task: () => Promise<void>) => {
    const next = (work.get(uid) ?? Promise.resolve()).then(task).catch((err: unknown) => {
      failures.push(`${uid}: ${err instanceof Error ? err.message : String(err)}`);
    });
    work.set(uid, next);
  };

  function allocate(node: string): string {
    const cidr = options.nodes.get(node) as string;
    const prefix = cidr.split(".").slice(0, 3).join(".");
    const taken = used.get(node) ?? new Set<number>();
    used.set(node, taken);
    for (let host = 2; host < 255; host++) {
      if (taken.has(host)) continue;
      taken.add(host);
      return `${prefix}.${host}`;
    }
    throw new Error(`node ${node}: no address left in ${cidr}`);
  }
  function release(node: string, address: string) {
    used.get(node)?.delete(Number(address.split(".")[3]));
  }

  /** Reads a ConfigMap or Secret, waiting while it does not exist (unless optional). */
  async function readSource(
    kind: "ConfigMap" | "Secret",
    namespace: string,
    name: string,
    optional: boolean,
    uid: string,
  ): Promise<Record<string, Buffer> | undefined> {
    for (;;) {
      try {
        if (kind === "ConfigMap") {
          const cm = await core.readNamespacedConfigMap({ name, namespace });
          return Object.fromEntries(Object.entries(cm.data ?? {}).map(([k, v]) => [k, Buffer.from(v)]));
        }
        const secret = await core.readNamespacedSecret({ name, namespace });
        return Object.fromEntries(
          Object.entries(secret.data ?? {}).map(([k, v]) => [k, Buffer.from(v, "base64")]),
        );
      } catch (err) {
        if (!isNotFound(err)) throw err;
        if (optional) return undefined;
        if (stopped || deleting.has(uid)) throw new Error(`${kind} ${namespace}/${name} never appeared`);
        await sleep(500);
      }
    }
  }

  function fieldOf(pod: V1Pod, path: string, ip: string): string {
    switch (path) {
      case "metadata.name":
        return pod.metadata?.name ?? "";
      case "metadata.namespace":
        return pod.metadata?.namespace ?? "";
      case "metadata.uid":
        return pod.metadata?.uid ?? "";
      case "spec.nodeName":
        return pod.spec?.nodeName ?? "";
      case "spec.serviceAccountName":
        return pod.spec?.serviceAccountName ?? "";
      case "status.podIP":
        return ip;
      default:
        throw new Error(`fieldRef ${path} is not supported here`);
    }
  }

  /** Writes files (key -> content, or `items` path -> content of key) into a new directory. */
  function writeFiles(dir: string, files: Record<string, Buffer>, items?: { key: string; path: string }[]) {
    mkdirSync(dir, { recursive: true });
    const chosen = items ?? Object.keys(files).map((key) => ({ key, path: key }));
    for (const { key, path } of chosen) {
      const content = files[key];
      if (content === undefined) throw new Error(`key ${key} is missing`);
      mkdirSync(join(dir, path, ".."), { recursive: true });
      writeFileSync(join(dir, path), content, { mode: 0o644 });
    }
  }

  /** Volume name -> how it is mounted. */
  async function materializeVolumes(pod: V1Pod, dir: string, ip: string) {
    const namespace = pod.metadata?.namespace as string;
    const uid = pod.metadata?.uid as string;
    const out = new Map<string, { kind: "bind"; source: string; readOnly: boolean } | { kind: "tmpfs" }>();
    for (const v of pod.spec?.volumes ?? []) {
      const vdir = join(dir, "volumes", v.name);
      if (v.configMap) {
        const files = await readSource(
          "ConfigMap",
          namespace,
          v.configMap.name ?? "",
          !!v.configMap.optional,
          uid,
        );
        writeFiles(vdir, files ?? {}, v.configMap.items);
        out.set(v.name, { kind: "bind", source: vdir, readOnly: true });
      } else if (v.secret) {
        const files = await readSource(
          "Secret",
          namespace,
          v.secret.secretName as string,
          !!v.secret.optional,
          uid,
        );
        writeFiles(vdir, files ?? {}, v.secret.items);
        out.set(v.name, { kind: "bind", source: vdir, readOnly: true });
      } else if (v.emptyDir) {
        out.set(v.name, { kind: "tmpfs" });
      } else if (v.projected) {
        mkdirSync(vdir, { recursive: true });
        for (const source of v.projected.sources ?? []) {
          if (source.serviceAccountToken) {
            const t = source.serviceAccountToken;
            const token = await core.createNamespacedServiceAccountToken({
              name: pod.spec?.serviceAccountName ?? "default",
              namespace,
              body: {
                spec: {
                  audiences: t.audience ? [t.audience] : [],
                  expirationSeconds: t.expirationSeconds ?? 3600,
                  boundObjectRef: { apiVersion: "v1", kind: "Pod", name: pod.metadata?.name ?? "", uid },
                },
              },
            });
            writeFiles(vdir, { [t.path]: Buffer.from(token.status?.token ?? "") });
          } else if (source.configMap) {
            const files = await readSource(
              "ConfigMap",
              namespace,
              source.configMap.name ?? "",
              !!source.configMap.optional,
              uid,
            );
            writeFiles(vdir, files ?? {}, source.configMap.items);
          } else if (source.secret) {
            const files = await readSource(
              "Secret",
              namespace,
              source.secret.name ?? "",
              !!source.secret.optional,
              uid,
            );
            writeFiles(vdir, files ?? {}, source.secret.items);
          } else if (source.downwardAPI) {
            for (const item of source.downwardAPI.items ?? []) {
              if (!item.fieldRef) throw new Error(`volume ${v.name}: only fieldRef downward API items`);
              writeFiles(vdir, { [item.path]: Buffer.from(fieldOf(pod, item.fieldRef.fieldPath, ip)) });
            }
          } else {
            throw new Error(`volume ${v.name}: a projected source of an unsupported kind`);
          }
        }
        out.set(v.name, { kind: "bind", source: vdir, readOnly: true });
      } else {
        throw new Error(
          `volume ${v.name}: this kind of volume cannot exist here (the test overlay replaces it)`,
        );
      }
    }
    return out;
  }

  async function envOf(pod: V1Pod, c: V1Container, ip: string, path: string) {
    const namespace = pod.metadata?.namespace as string;
    const uid = pod.metadata?.uid as string;
    const env: Record<string, string> = {
      PATH: path,
      HOSTNAME: pod.metadata?.name ?? "",
      HOME: "/",
      KUBERNETES_SERVICE_HOST: options.apiserver.host,
      KUBERNETES_SERVICE_PORT: String(options.apiserver.port),
    };
    for (const e of c.env ?? []) {
      if (e.value !== undefined) env[e.name] = e.value;
      else if (e.valueFrom?.secretKeyRef) {
        const ref = e.valueFrom.secretKeyRef;
        const data = await readSource("Secret", namespace, ref.name as string, !!ref.optional, uid);
        const value = data?.[ref.key];
        if (value !== undefined) env[e.name] = value.toString();
        else if (!ref.optional)
          throw new Error(`env ${e.name}: key ${ref.key} missing in Secret ${ref.name}`);
      } else if (e.valueFrom?.configMapKeyRef) {
        const ref = e.valueFrom.configMapKeyRef;
        const data = await readSource("ConfigMap", namespace, ref.name as string, !!ref.optional, uid);
        const value = data?.[ref.key];
        if (value !== undefined) env[e.name] = value.toString();
        else if (!ref.optional)
          throw new Error(`env ${e.name}: key ${ref.key} missing in ConfigMap ${ref.name}`);
      } else if (e.valueFrom?.fieldRef) {
        env[e.name] = fieldOf(pod, e.valueFrom.fieldRef.fieldPath, ip);
      } else {
        env[e.name] = "";
      }
    }
    return env;
  }

  function portOf(c: V1Container, port: number | string): number {
    if (typeof port === "number") return port;
    if (/^\d+$/.test(port)) return Number(port);
    const found = c.ports?.find((p) => p.name === port)?.containerPort;
    if (found === undefined) throw new Error(`container ${c.name}: no port named ${port}`);
    return found;
  }

  /** One probe attempt. */
  async function probeOnce(c: V1Container, probe: V1Probe, ip: string): Promise<boolean> {
    if (!probe.httpGet) throw new Error(`container ${c.name}: only httpGet probes are supported here`);
    const scheme = (probe.httpGet.scheme ?? "HTTP").toLowerCase();
    const url = `${scheme}://${ip}:${portOf(c, probe.httpGet.port)}${probe.httpGet.path ?? "/"}`;
    const timeoutMs = (probe.timeoutSeconds ?? 1) * 1000;
    try {
      const res = await request(url, {
        ...(scheme === "https" ? { dispatcher: insecure } : {}),
        headersTimeout: timeoutMs,
        bodyTimeout: timeoutMs,
        signal: AbortSignal.timeout(timeoutMs),
      });
      await res.body.dump();
      return res.statusCode >= 200 && res.statusCode < 400;
    } catch {
      return false;
    }
  }

  async function waitReady(p: RunningPod, rc: RunningContainer) {
    for (const probe of [rc.spec.startupProbe, rc.spec.readinessProbe]) {
      if (probe === undefined) continue;
      while (!(await probeOnce(rc.spec, probe, p.ip))) {
        if (deleting.has(p.uid) || stopped) return;
        await sleep(200);
      }
    }
    rc.ready = true;
  }

  function runContainer(
    pod: V1Pod,
    p: RunningPod,
    c: V1Container,
    env: Record<string, string>,
    mounts: ContainerMount[],
  ) {
    const image = resolveImage(c.image ?? "", options.bin);
    const ctx = c.securityContext ?? {};
    const podCtx = pod.spec?.securityContext ?? {};
    const uid = ctx.runAsUser ?? podCtx.runAsUser ?? image.user?.uid;
    const gid = ctx.runAsGroup ?? podCtx.runAsGroup ?? image.user?.gid ?? uid;
    if ((ctx.runAsNonRoot ?? podCtx.runAsNonRoot) && (uid === undefined || uid === 0))
      throw new Error(`container ${c.name}: runAsNonRoot, but it would run as root`);
    const argv =
      c.command !== undefined
        ? [...c.command, ...(c.args ?? [])]
        : [...image.entrypoint, ...(c.args ?? image.cmd)];
    return startContainer({
      dir: join(p.dir, "containers", c.name),
      netns: p.netns,
      hostname: p.name,
      mounts: [...image.mounts, ...mounts],
      links: image.links,
      readOnlyRootFilesystem: ctx.readOnlyRootFilesystem === true,
      ...(uid !== undefined ? { user: { uid, gid: gid ?? uid } } : {}),
      noNewPrivileges: ctx.allowPrivilegeEscalation === false,
      dropAllCapabilities: (ctx.capabilities?.drop ?? []).includes("ALL"),
      env,
      workingDir: c.workingDir ?? image.workingDir,
      argv,
    });
  }

  /** Restarts a container that exits on its own (restartPolicy Always), with a doubling backoff. */
  function supervise(p: RunningPod, rc: RunningContainer, restart: () => Container) {
    void rc.current.exited.then(async (exit) => {
      if (p.terminating || stopped) return;
      crashes.push(
        `${p.namespace}/${p.name}/${rc.name}: exited ${exit.code ?? exit.signal}\n${rc.current.output().slice(-3000)}`,
      );
      await sleep(Math.min(1000 * 2 ** rc.restarts, 10_000));
      if (p.terminating || stopped) return;
      rc.restarts++;
      rc.current = restart();
      supervise(p, rc, restart);
    });
  }

  async function startPod(pod: V1Pod) {
    const uid = pod.metadata?.uid as string;
    const node = pod.spec?.nodeName as string;
    const ip = allocate(node);
    const dir = join(options.dir, `${pod.metadata?.namespace}_${pod.metadata?.name}`);
    const netns = network.addPod(ip);
    const p: RunningPod = {
      uid,
      namespace: pod.metadata?.namespace as string,
      name: pod.metadata?.name as string,
      node,
      ip,
      netns,
      dir,
      containers: [],
      labels: pod.metadata?.labels ?? {},
      boundAt: Date.now(),
      terminating: false,
    };
    pods.set(uid, p);
    try {
      if ((pod.spec?.initContainers ?? []).length > 0)
        throw new Error("init containers are not supported here");
      const volumes = await materializeVolumes(pod, dir, ip);
      for (const c of pod.spec?.containers ?? []) {
        const image = resolveImage(c.image ?? "", options.bin);
        const env = await envOf(pod, c, ip, image.path);
        const mounts: ContainerMount[] = (c.volumeMounts ?? []).map((m) => {
          const v = volumes.get(m.name);
          if (v === undefined) throw new Error(`container ${c.name}: no volume ${m.name}`);
          if (m.subPath) throw new Error(`container ${c.name}: subPath is not supported here`);
          return v.kind === "tmpfs"
            ? { kind: "tmpfs", target: m.mountPath }
            : {
                kind: "bind",
                target: m.mountPath,
                source: v.source,
                readOnly: v.readOnly || m.readOnly === true,
              };
        });
        const restart = () => runContainer(pod, p, c, env, mounts);
        const rc: RunningContainer = { name: c.name, spec: c, current: restart(), restarts: 0, ready: false };
        p.containers.push(rc);
        supervise(p, rc, restart);
      }
      await Promise.all(p.containers.map((rc) => waitReady(p, rc)));
      if (deleting.has(uid) || stopped) return;
      p.readyAt = Date.now();
      await core.patchNamespacedPod(
        {
          name: p.name,
          namespace: p.namespace,
          body: { metadata: { uid, annotations: { [POD_IP_ANNOTATION]: ip } } },
        },
        setHeaderOptions("Content-Type", PatchStrategy.MergePatch),
      );
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
  }

  async function stopContainer(p: RunningPod, rc: RunningContainer, deadline: number) {
    const preStop = rc.spec.lifecycle?.preStop;
    const child = rc.current.process;
    if (preStop?.sleep) await sleep(Math.min(preStop.sleep.seconds * 1000, deadline - Date.now()));
    else if (preStop?.httpGet)
      await probeOnce(rc.spec, { httpGet: preStop.httpGet, timeoutSeconds: 30 }, p.ip);
    else if (preStop?.exec?.command !== undefined)
      await execIn(child.pid as number, preStop.exec.command, deadline);
    else if (preStop !== undefined)
      throw new Error(`container ${rc.name}: a preStop hook of an unknown kind`);
    const signalled = Date.now();
    let killed = false;
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
    // As a kubelet: a preStop that used the whole grace period still leaves 2 s after SIGTERM.
    const timer = setTimeout(
      () => {
        killed = true;
        child.kill("SIGKILL");
      },
      Math.max(deadline - Date.now(), 2000),
    );
    const exit = await rc.current.exited;
    clearTimeout(timer);
    terminations.push({
      pod: `${p.namespace}/${p.name}`,
      container: rc.name,
      stopMs: Date.now() - signalled,
      killed,
      exitCode: exit.code,
    });
  }

  /** Runs `command` in the namespaces and root of the container whose process is `pid` (kubectl exec). */
  function execIn(pid: number, command: string[], deadline: number): Promise<void> {
    return new Promise((resolve) => {
      const child = spawn(
        "nsenter",
        ["--target", String(pid), "--mount", "--uts", "--net", "--root", "--wd", "--", ...command],
        { stdio: "ignore" },
      );
      const timer = setTimeout(() => child.kill("SIGKILL"), Math.max(0, deadline - Date.now()));
      child.once("close", () => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  async function terminatePod(pod: V1Pod, force: boolean) {
    const p = pods.get(pod.metadata?.uid as string);
    if (p === undefined || p.terminating) return;
    p.terminating = true;
    const graceS = force
      ? 0
      : (pod.metadata?.deletionGracePeriodSeconds ?? pod.spec?.terminationGracePeriodSeconds ?? 30);
    const deadline = Date.now() + graceS * 1000;
    await Promise.all(p.containers.map((rc) => stopContainer(p, rc, deadline)));
    network.removePod(p.netns);
    release(p.node, p.ip);
    pods.delete(p.uid);
    if (force) return;
    try {
      await core.deleteNamespacedPod({
        name: p.name,
        namespace: p.namespace,
        // In the body: with a body, the apiserver reads the options from it, not from the query.
        body: { gracePeriodSeconds: 0, preconditions: { uid: p.uid } },
      });
    } catch (err) {
      if (!isNotFound(err) && (err as { code?: number }).code !== 409) throw err;
    }
  }

  const informer = makeInformer<V1Pod>(kc, "/api/v1/pods", () => core.listPodForAllNamespaces());
  const watch = superviseInformer("kubelet pods", informer, 60_000, () => {});
  const onPod = (pod: V1Pod) => {
    watch.touch();
    const uid = pod.metadata?.uid;
    const node = pod.spec?.nodeName;
    if (uid === undefined || node === undefined || !options.nodes.has(node) || stopped) return;
    if (pod.metadata?.deletionTimestamp !== undefined) {
      deleting.add(uid);
      enqueue(uid, () => terminatePod(pod, false));
    } else if (!starting.has(uid)) {
      starting.add(uid);
      enqueue(uid, () => startPod(pod));
    }
  };
  informer.on("add", onPod);
  informer.on("update", onPod);
  informer.on("delete", (pod) => {
    watch.touch();
    const uid = pod.metadata?.uid;
    if (uid === undefined) return;
    deleting.add(uid);
    if (pods.get(uid)?.terminating === false) enqueue(uid, () => terminatePod(pod, true));
  });

  return informer.start().then(() => ({
    pods,
    terminations,
    crashes,
    failures,
    find: (namespace, name) => [...pods.values()].find((p) => p.namespace === namespace && p.name === name),
    async stop() {
      stopped = true;
      await watch.stop();
      await Promise.all(
        [...pods.values()].map(async (p) => {
          p.terminating = true;
          for (const rc of p.containers) rc.current.process.kill("SIGKILL");
          await Promise.all(p.containers.map((rc) => rc.current.exited));
          network.removePod(p.netns);
        }),
      );
      await insecure.close();
    },
  }));
}
