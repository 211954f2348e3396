/**
 * deploy/ rendered and checked offline: every object validates against its schema (kubernetes-models,
 * @kubernetes-models/prometheus-operator and /keda; Flagger's kinds against the CRD in
 * Flagger's CRD (from its Go module, test/k8s/build.sh) with ajv, unknown fields rejected), and lint rules catch the mistakes
 * that fail silently in a cluster: HPAs on metrics no API serves,
 * underscore vLLM names in PromQL, Flagger metrics without templates, GPU Deployments without a startup
 * probe, /dev/shm or the GPU scheduler. The same objects pass a server-side dry run in
 * test/k8s/deploy-dry-run.test.ts, and their PromQL runs on a real Prometheus in prometheus.test.ts.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Ajv } from "ajv";
import { beforeAll, describe, expect, it } from "vitest";
import { parse, parseAllDocuments } from "yaml";
import { parseGatewayConfig } from "../../server/config/gateway-config.js";
import { type KubeObject, kustomizations, promqlExpressions, render, root } from "../helpers/deploy.js";
import { controlPlaneBinaries } from "../k8s/control-plane.js";

const GPU = "nvidia.com/gpu";
let objects: KubeObject[] = [];
const byKind = (kind: string) => objects.filter((o) => o.kind === kind);

beforeAll(() => {
  objects = kustomizations()
    .filter((dir) => ["deploy/base", "deploy/models", "deploy/monitoring"].includes(dir.slice(root.length)))
    .flatMap((dir) => render(dir));
});

describe("deploy/ renders", () => {
  it("every kustomization renders, and the three top-level ones hold the whole platform", () => {
    const dirs = kustomizations().map((d) => d.slice(root.length));
    expect(dirs).toEqual(expect.arrayContaining(["deploy/base", "deploy/models", "deploy/monitoring"]));
    for (const dir of kustomizations()) expect(render(dir).length, dir).toBeGreaterThan(0);
    const kinds = new Set(objects.map((o) => o.kind));
    for (const kind of [
      "Deployment",
      "HorizontalPodAutoscaler",
      "ScaledObject",
      "Canary",
      "MetricTemplate",
      "PodMonitor",
      "ServiceMonitor",
      "PrometheusRule",
      "NetworkPolicy",
      "PodDisruptionBudget",
    ])
      expect(kinds, kind).toContain(kind);
  });
});

describe("schemas", () => {
  /** The model class for an apiVersion and kind, from the kubernetes-models packages. */
  async function modelOf(apiVersion: string, kind: string) {
    const packages: Record<string, string> = {
      "monitoring.coreos.com": "@kubernetes-models/prometheus-operator",
      "keda.sh": "@kubernetes-models/keda",
    };
    const group = apiVersion.includes("/") ? apiVersion.split("/")[0] : "";
    const pkg = packages[group as string] ?? "kubernetes-models";
    const module = (await import(`${pkg}/${apiVersion}`)) as Record<
      string,
      new (
        o: unknown,
      ) => { validate(): void }
    >;
    return module[kind];
  }

  it("Kubernetes, prometheus-operator and KEDA objects validate against their models", async () => {
    const checked: string[] = [];
    for (const o of objects.filter((o) => !o.apiVersion.startsWith("flagger.app/"))) {
      const Model = await modelOf(o.apiVersion, o.kind);
      expect(Model, `${o.apiVersion} ${o.kind} has a model`).toBeDefined();
      expect(
        () => new (Model as NonNullable<typeof Model>)(o).validate(),
        `${o.kind}/${o.metadata.name}`,
      ).not.toThrow();
      checked.push(o.kind);
    }
    expect(checked.length).toBeGreaterThan(20);
  });

  it("Flagger objects validate against Flagger's CRD schemas, unknown fields rejected", () => {
    const crds = parseAllDocuments(
      readFileSync(join(controlPlaneBinaries(), "crds/flagger.app_crds.yaml"), "utf8"),
    ).map((d) => d.toJS());
    const ajv = new Ajv({ strict: false, allErrors: true, validateFormats: false });
    /** additionalProperties: false wherever the schema lists properties and says nothing else. */
    const closed = (schema: Record<string, unknown>): Record<string, unknown> => {
      const out: Record<string, unknown> = {};
      for (const [k, v] of Object.entries(schema)) {
        if (Array.isArray(v)) out[k] = v.map((x) => (x && typeof x === "object" ? closed(x) : x));
        else if (v && typeof v === "object") out[k] = closed(v as Record<string, unknown>);
        else out[k] = v;
      }
      if (out.properties !== undefined && out.additionalProperties === undefined)
        out.additionalProperties = false;
      return out;
    };
    const flagger = objects.filter((o) => o.apiVersion.startsWith("flagger.app/"));
    expect(flagger.map((o) => o.kind).sort()).toEqual([
      "Canary",
      "MetricTemplate",
      "MetricTemplate",
      "MetricTemplate",
    ]);
    for (const o of flagger) {
      const [group, version] = o.apiVersion.split("/");
      const crd = crds.find((c) => c.spec.group === group && c.spec.names.kind === o.kind);
      const schema = crd.spec.versions.find((v: { name: string }) => v.name === version).schema
        .openAPIV3Schema;
      const validate = ajv.compile(closed(schema));
      expect(validate(o), `${o.kind}/${o.metadata.name}: ${ajv.errorsText(validate.errors)}`).toBe(true);
    }
    // The check itself rejects an unknown field and a wrong type.
    const canary = structuredClone(flagger.find((o) => o.kind === "Canary")) as KubeObject;
    canary.spec.analysis.stepWeigth = 10;
    const schema = crds.find((c) => c.spec.names.kind === "Canary").spec.versions[0].schema.openAPIV3Schema;
    expect(ajv.validate(closed(schema), canary)).toBe(false);
  });
});

describe("lint: the mistakes that fail silently", () => {
  it("HPAs use Resource metrics only for cpu and memory, and Pods metrics that prometheus-adapter serves", () => {
    const values = parse(
      readFileSync(join(root, "deploy/monitoring/prometheus-adapter-values.yaml"), "utf8"),
    );
    const served = new Set<string>();
    for (const rule of values.rules.custom) {
      // The adapter's rename, applied to the series its seriesQuery selects.
      for (const series of ["vllm:num_requests_waiting", "vllm:num_requests_running"]) {
        const m = new RegExp(rule.name.matches).exec(series);
        if (m) served.add(rule.name.as.replace(/\$\{(\d)\}/g, (_: string, i: string) => m[Number(i)] ?? ""));
      }
    }
    expect(served).toEqual(new Set(["vllm_num_requests_waiting", "vllm_num_requests_running"]));
    for (const hpa of byKind("HorizontalPodAutoscaler")) {
      for (const m of hpa.spec.metrics) {
        if (m.type === "Resource") expect(["cpu", "memory"], hpa.metadata.name).toContain(m.resource.name);
        if (m.type === "Pods") expect(served, hpa.metadata.name).toContain(m.pods.metric.name);
        expect(["Resource", "Pods"], hpa.metadata.name).toContain(m.type);
      }
    }
  });

  it("PromQL names vLLM's metrics with colons (the underscore forms exist only inside the adapter)", () => {
    const exprs = promqlExpressions(objects);
    expect(exprs.length).toBeGreaterThan(25);
    for (const { where, expr } of exprs) {
      expect(expr, where).not.toMatch(/(^|[^:\w])vllm_[a-z]/);
    }
    expect(exprs.some(({ expr }) => expr.includes("vllm:num_requests_waiting"))).toBe(true);
  });

  it("every Flagger metric that is not built in has a templateRef that resolves in the bundle", () => {
    const builtIn = new Set(["request-success-rate", "request-duration"]);
    for (const canary of byKind("Canary")) {
      for (const m of canary.spec.analysis.metrics) {
        if (builtIn.has(m.name) && m.templateRef === undefined) continue;
        expect(m.templateRef, `${canary.metadata.name}: ${m.name}`).toBeDefined();
        const ns = m.templateRef.namespace ?? canary.metadata.namespace;
        const template = byKind("MetricTemplate").find(
          (t) => t.metadata.name === m.templateRef.name && t.metadata.namespace === ns,
        );
        expect(template, `${canary.metadata.name}: ${m.name} -> ${ns}/${m.templateRef.name}`).toBeDefined();
        // Template variables the query uses are given by the Canary.
        for (const [, name] of template?.spec.query.matchAll(/\{\{\s*variables\.(\w+)\s*\}\}/g) ?? [])
          expect(m.templateVariables ?? {}, `${m.name} needs variable ${name}`).toHaveProperty(
            name as string,
          );
      }
    }
  });

  it("Flagger targets have exactly one selector label, and their HPA and Deployment exist", () => {
    for (const canary of byKind("Canary")) {
      const target = byKind("Deployment").find((d) => d.metadata.name === canary.spec.targetRef.name);
      expect(target, canary.spec.targetRef.name).toBeDefined();
      expect(Object.keys(target?.spec.selector.matchLabels ?? {})).toHaveLength(1);
      expect(byKind("HorizontalPodAutoscaler").map((h) => h.metadata.name)).toContain(
        canary.spec.autoscalerRef.name,
      );
      // Flagger 1.36 copies the target with Kubernetes 1.27's types: a preStop `sleep` action (1.29) is
      // dropped and the -primary copy refused (seen in test/k8s/deployed.test.ts). An exec of sleep survives.
      for (const c of target?.spec.template.spec.containers ?? [])
        expect(c.lifecycle?.preStop?.sleep, `${canary.metadata.name}: ${c.name}`).toBeUndefined();
    }
  });

  it("GPU Deployments: startupProbe, /dev/shm in memory, the GPU scheduler, the GPU toleration, a pinned image", () => {
    const gpuDeployments = byKind("Deployment").filter((d) =>
      d.spec.template.spec.containers.some(
        (c: { resources?: { limits?: object } }) => GPU in (c.resources?.limits ?? {}),
      ),
    );
    expect(gpuDeployments.length).toBeGreaterThanOrEqual(2);
    for (const d of gpuDeployments) {
      const pod = d.spec.template.spec;
      const id = d.metadata.name;
      expect(pod.schedulerName, id).toBe("gpu-scheduler");
      expect(pod.tolerations, id).toContainEqual(expect.objectContaining({ key: GPU, effect: "NoSchedule" }));
      const shm = pod.volumes.find(
        (v: { emptyDir?: { medium?: string } }) => v.emptyDir?.medium === "Memory",
      );
      expect(shm, id).toBeDefined();
      for (const c of pod.containers) {
        if (!(GPU in (c.resources?.limits ?? {}))) continue;
        expect(c.startupProbe, id).toBeDefined();
        // The startup probe's budget covers a slow model load (at least 10 minutes).
        expect(c.startupProbe.periodSeconds * c.startupProbe.failureThreshold, id).toBeGreaterThanOrEqual(
          600,
        );
        expect(c.readinessProbe?.initialDelaySeconds ?? 0, id).toBe(0);
        expect(c.volumeMounts, id).toContainEqual(
          expect.objectContaining({ name: shm.name, mountPath: "/dev/shm" }),
        );
        expect(c.resources.requests[GPU], id).toBe(c.resources.limits[GPU]);
        expect(c.image, id).toMatch(/:v?\d+\.\d+\.\d+$/);
      }
      expect(pod.terminationGracePeriodSeconds, id).toBeGreaterThanOrEqual(60);
    }
  });

  it("KEDA triggers: no removed metricName, AverageValue where a fallback needs it", () => {
    for (const so of byKind("ScaledObject")) {
      for (const t of so.spec.triggers) {
        expect(t.metadata, so.metadata.name).not.toHaveProperty("metricName");
        if (so.spec.fallback !== undefined) expect(t.metricType, so.metadata.name).toBe("AverageValue");
      }
    }
  });

  it("the gateway's config is valid and serves exactly the models deploy/models runs, discovered by label", () => {
    const cm = byKind("ConfigMap").find((c) => c.metadata.name.startsWith("kinfer-gateway"));
    const config = parseGatewayConfig(parse(cm?.data?.["gateway.yaml"] ?? ""), "gateway.yaml");
    expect(config.discovery.source).toBe("kubernetes");
    const served = byKind("Deployment")
      .flatMap((d) => d.spec.template.spec.containers)
      .flatMap((c: { args?: string[] }) => c.args ?? [])
      .filter((a: string) => a.startsWith("--served-model-name="))
      .map((a: string) => a.split("=")[1]);
    expect(config.models.map((m) => m.name).sort()).toEqual([...served].sort());
    // Each model is discoverable: a Service labelled with its name, or a Canary whose Services will be.
    for (const model of served) {
      const service = byKind("Service").some((s) => s.metadata.labels?.["kinfer.io/model"] === model);
      const canary = byKind("Canary").some(
        (c) =>
          c.spec.service.primary.labels["kinfer.io/model"] === model &&
          c.spec.service.canary.labels["kinfer.io/model"] === model,
      );
      expect(service || canary, model).toBe(true);
    }
  });

  it("the GPU scheduler's extender is its sidecar on loopback, nodeCacheCapable, for pods that ask for GPUs", () => {
    const cm = byKind("ConfigMap").find((c) => c.metadata.name.startsWith("gpu-scheduler"));
    const config = parse(Object.values(cm?.data ?? {})[0] ?? "");
    expect(config.profiles.map((p: { schedulerName: string }) => p.schedulerName)).toContain("gpu-scheduler");
    const [extender] = config.extenders;
    // filter holds GPUs and bind binds anything: only the kube-scheduler in the same pod may call them.
    const url = new URL(extender.urlPrefix);
    expect(url.hostname).toBe("127.0.0.1");
    const pod = byKind("Deployment").find((d) => d.metadata.name === "gpu-scheduler")?.spec.template.spec;
    const sidecar = pod.containers.find((c: { name: string }) => c.name === "kinfer-scheduler");
    expect(sidecar.args).toEqual(expect.arrayContaining(["--host=127.0.0.1", `--port=${url.port}`]));
    // No Service exposes the extender port; the one Service on these pods is the read-only ops port.
    const services = byKind("Service").filter(
      (s) => s.spec.selector?.["app.kubernetes.io/name"] === "gpu-scheduler",
    );
    for (const s of services)
      for (const p of s.spec.ports)
        expect(String(p.targetPort === "ops" ? 8889 : p.targetPort)).not.toBe(url.port);
    expect(extender.nodeCacheCapable).toBe(true);
    expect(extender.managedResources).toEqual([
      { name: "nvidia.com/gpu", ignoredByScheduler: false },
      { name: "kinfer.io/gpu-milli", ignoredByScheduler: true },
    ]);
  });

  it("the GPU scheduler's lease lives where its Role grants it, and kube-scheduler's image comes from images:", () => {
    const cm = byKind("ConfigMap").find((c) => c.metadata.name.startsWith("gpu-scheduler"));
    const { leaderElection } = parse(Object.values(cm?.data ?? {})[0] ?? "");
    expect(leaderElection.leaderElect).toBe(true);
    const role = byKind("Role").find((r) =>
      (r.rules ?? []).some(
        (rule) =>
          rule.resources.includes("leases") && rule.resourceNames?.includes(leaderElection.resourceName),
      ),
    );
    // Rendered, not as written: kustomize's `namespace:` moves namespaced objects (the issue this catches).
    expect(role?.metadata.namespace).toBe(leaderElection.resourceNamespace);
    const binding = byKind("RoleBinding").find(
      (b) => b.spec === undefined && b.metadata.name === role?.metadata.name,
    );
    expect(binding?.metadata.namespace).toBe(leaderElection.resourceNamespace);
    const base = parse(readFileSync(join(root, "deploy/base/kustomization.yaml"), "utf8"));
    expect(base.images).toContainEqual({
      name: "registry.k8s.io/kube-scheduler",
      newTag: expect.any(String),
    });
  });

  it("the gateway has no cluster-wide permission: a Role per discovery namespace (EndpointSlices only), and in its own its control state by name", () => {
    const cm = byKind("ConfigMap").find((c) => c.metadata.name.startsWith("kinfer-gateway"));
    const config = parseGatewayConfig(parse(cm?.data?.["gateway.yaml"] ?? ""), "gateway.yaml");
    const isGateway = (b: KubeObject) =>
      b.subjects?.some(
        (s: { kind: string; name: string }) => s.kind === "ServiceAccount" && s.name === "kinfer-gateway",
      );
    expect(byKind("ClusterRoleBinding").filter(isGateway)).toEqual([]);
    const roleOf = (b: KubeObject) =>
      byKind("Role").find(
        (r) => r.metadata.name === b.roleRef?.name && r.metadata.namespace === b.metadata.namespace,
      );
    const bindings = byKind("RoleBinding").filter(isGateway);
    const discovery = bindings.filter((b) => b.roleRef?.name === "kinfer-gateway-discovery");
    expect(discovery.map((b) => b.metadata.namespace).sort()).toEqual(
      [...(config.discovery.namespaces ?? [])].sort(),
    );
    for (const b of discovery)
      expect(roleOf(b)?.rules).toEqual([
        { apiGroups: ["discovery.k8s.io"], resources: ["endpointslices"], verbs: ["get", "list", "watch"] },
      ]);
    // The control state (config.control.store kubernetes): in the gateway's own namespace only.
    expect(config.control.store).toBe("kubernetes");
    const control = bindings.filter((b) => b.roleRef?.name === "kinfer-gateway-control");
    expect(control.map((b) => b.metadata.namespace)).toEqual(["kinfer-system"]);
    expect(bindings).toHaveLength(discovery.length + control.length);
    const rules = roleOf(control[0] as KubeObject)?.rules as {
      resources: string[];
      resourceNames?: string[];
    }[];
    expect(
      rules.map((r) => `${r.resources.join(",")}${r.resourceNames ? `/${r.resourceNames.join(",")}` : ""}`),
    ).toEqual([
      "kinfermodels",
      "kinfermodels/status",
      "leases",
      "leases/kinfer-gateway-rollout",
      "secrets/kinfer-gateway-keys",
    ]);
    expect(rules.find((r) => r.resources[0] === "leases" && !r.resourceNames)).toMatchObject({
      verbs: ["create"],
    });
  });

  it("every model's PodDisruptionBudget also covers Flagger's -primary copy of its pods", () => {
    for (const d of byKind("Deployment").filter(
      (d) => d.metadata.labels?.["kinfer.io/component"] === "vllm",
    )) {
      const labels: Record<string, string> = d.spec.template.metadata.labels;
      // Flagger's primary: the same template, with the one selector label's value suffixed -primary.
      const [selectorKey] = Object.keys(d.spec.selector.matchLabels);
      const primary = { ...labels, [selectorKey as string]: `${labels[selectorKey as string]}-primary` };
      const pdbs = byKind("PodDisruptionBudget").filter((p) => p.metadata.namespace === d.metadata.namespace);
      const covering = (pod: Record<string, string>) =>
        pdbs.filter((p) => Object.entries(p.spec.selector.matchLabels).every(([k, v]) => pod[k] === v));
      expect(
        covering(labels).map((p) => p.metadata.name),
        d.metadata.name,
      ).toHaveLength(1);
      expect(
        covering(primary).map((p) => p.metadata.name),
        `${d.metadata.name}-primary`,
      ).toEqual(covering(labels).map((p) => p.metadata.name));
    }
  });

  it("grace periods outlast the longest stream the gateway allows, on the gateway and on vLLM", () => {
    const cm = byKind("ConfigMap").find((c) => c.metadata.name.startsWith("kinfer-gateway"));
    const config = parseGatewayConfig(parse(cm?.data?.["gateway.yaml"] ?? ""), "gateway.yaml");
    const longestS = config.limits.maxTimeoutMs / 1000;
    expect(config.timeouts.drainMs).toBeGreaterThanOrEqual(config.limits.maxTimeoutMs);
    const gateway = byKind("Deployment").find((d) => d.metadata.name === "kinfer-gateway")?.spec.template
      .spec;
    /** Seconds a preStop hook waits: the sleep action, or an exec of `sleep N`. */
    const preStop = (c: {
      lifecycle?: { preStop?: { sleep?: { seconds: number }; exec?: { command: string[] } } };
    }) => {
      const hook = c.lifecycle?.preStop;
      const [cmd, seconds] = hook?.exec?.command ?? [];
      return hook?.sleep?.seconds ?? (cmd === "sleep" ? Number(seconds) : 0);
    };
    expect(gateway.terminationGracePeriodSeconds).toBeGreaterThanOrEqual(
      preStop(gateway.containers[0]) + config.timeouts.drainMs / 1000 + 5,
    );
    for (const d of byKind("Deployment").filter(
      (d) => d.metadata.labels?.["kinfer.io/component"] === "vllm",
    )) {
      const pod = d.spec.template.spec;
      const vllm = pod.containers[0];
      // A release that drains on SIGTERM (vLLM 0.18 added --shutdown-timeout; before, SIGTERM aborts).
      const [major, minor] = (/:v(\d+)\.(\d+)\./.exec(vllm.image) ?? []).slice(1).map(Number);
      expect((major as number) * 100 + (minor as number), vllm.image).toBeGreaterThanOrEqual(18);
      const timeout = Number(
        (vllm.args as string[]).find((a) => a.startsWith("--shutdown-timeout="))?.split("=")[1],
      );
      expect(timeout, d.metadata.name).toBeGreaterThanOrEqual(longestS);
      expect(pod.terminationGracePeriodSeconds, d.metadata.name).toBeGreaterThan(preStop(vllm) + timeout);
      // Probes on a busy replica: /health can take seconds; a 1 s timeout (the default) flaps.
      for (const probe of [vllm.readinessProbe, vllm.livenessProbe, vllm.startupProbe])
        expect(probe.timeoutSeconds, d.metadata.name).toBeGreaterThanOrEqual(5);
    }
  });

  it("no volume asks for ReadWriteMany: model caches are claimed per pod from the default class", () => {
    const claims = [
      ...byKind("PersistentVolumeClaim").map((c) => c.spec),
      ...byKind("Deployment").flatMap((d) =>
        (d.spec.template.spec.volumes ?? [])
          .filter((v: { ephemeral?: unknown }) => v.ephemeral !== undefined)
          .map(
            (v: { ephemeral: { volumeClaimTemplate: { spec: unknown } } }) =>
              v.ephemeral.volumeClaimTemplate.spec,
          ),
      ),
    ];
    expect(claims.length).toBeGreaterThanOrEqual(2);
    for (const c of claims) expect(c.accessModes).toEqual(["ReadWriteOnce"]);
  });

  it("monitors and rules carry the release label kube-prometheus-stack selects them by", () => {
    for (const o of [...byKind("PodMonitor"), ...byKind("ServiceMonitor"), ...byKind("PrometheusRule")])
      expect(o.metadata.labels?.release, `${o.kind}/${o.metadata.name}`).toBe("kube-prometheus-stack");
  });

  it("monitors set the job labels the alerts and the dashboard use", () => {
    const jobs = [...byKind("PodMonitor"), ...byKind("ServiceMonitor")].map((m) => {
      const endpoint = (m.spec.podMetricsEndpoints ?? m.spec.endpoints)[0];
      return endpoint.relabelings.find((r: { targetLabel: string }) => r.targetLabel === "job").replacement;
    });
    expect(jobs.sort()).toEqual(["dcgm-exporter", "kinfer-gateway", "kinfer-scheduler", "vllm"]);
    // Each ServiceMonitor selects a Service that exists (DCGM's comes with NVIDIA's GPU operator).
    for (const sm of byKind("ServiceMonitor").filter((s) => s.metadata.name !== "dcgm-exporter")) {
      const match = byKind("Service").filter((s) =>
        Object.entries(sm.spec.selector.matchLabels).every(([k, v]) => s.metadata.labels?.[k] === v),
      );
      expect(
        match.map((s) => s.metadata.name),
        sm.metadata.name,
      ).toEqual([sm.metadata.name]);
    }
  });
});
