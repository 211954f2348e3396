/**
 * Reads the openb trace files (data/openb): nodes `sn,cpu_milli,memory_mib,gpu,model` and pods
 * `name,cpu_milli,memory_mib,num_gpu,gpu_milli[,gpu_spec,...]`, validating every row.
 */
import { readFileSync } from "node:fs";
import type { PodRequest } from "./pod-request.js";

export interface TraceNode {
  readonly name: string;
  readonly cpuMilli: number;
  readonly memMiB: number;
  readonly gpus: number;
  readonly model: string;
}

function rows(file: string): { header: string[]; rows: string[][] } {
  const lines = readFileSync(file, "utf8")
    .split(/\r?\n/)
    .filter((l) => l.trim() !== "");
  const header = (lines.shift() ?? "").split(",");
  return { header, rows: lines.map((l) => l.split(",")) };
}

function column(header: string[], name: string, file: string): number {
  const i = header.indexOf(name);
  if (i === -1) throw new Error(`${file}: no column "${name}"`);
  return i;
}

function int(value: string | undefined, what: string): number {
  const n = Number(value);
  if (value === undefined || value === "" || !Number.isInteger(n) || n < 0)
    throw new Error(`${what}: not a count: "${value}"`);
  return n;
}

export function readNodes(file: string): TraceNode[] {
  const { header, rows: data } = rows(file);
  const [sn, cpu, mem, gpu, model] = ["sn", "cpu_milli", "memory_mib", "gpu", "model"].map((c) =>
    column(header, c, file),
  );
  return data.map((r, i) => ({
    name: r[sn as number] ?? `node-${i}`,
    cpuMilli: int(r[cpu as number], `${file}:${i + 2} cpu_milli`),
    memMiB: int(r[mem as number], `${file}:${i + 2} memory_mib`),
    gpus: int(r[gpu as number], `${file}:${i + 2} gpu`),
    model: r[model as number] ?? "",
  }));
}

export function readPods(file: string): PodRequest[] {
  const { header, rows: data } = rows(file);
  const [cpu, mem, num, milli] = ["cpu_milli", "memory_mib", "num_gpu", "gpu_milli"].map((c) =>
    column(header, c, file),
  );
  const spec = header.indexOf("gpu_spec");
  return data.map((r, i) => {
    const where = `${file}:${i + 2}`;
    const gpus = int(r[num as number], `${where} num_gpu`);
    const share = int(r[milli as number], `${where} gpu_milli`);
    if (share > 1000) throw new Error(`${where}: gpu_milli over 1000`);
    const isShare = gpus === 1 && share > 0 && share < 1000;
    return {
      gpus: isShare ? 0 : gpus,
      gpuMilli: isShare ? share : 0,
      cpuMilli: int(r[cpu as number], `${where} cpu_milli`),
      memMiB: int(r[mem as number], `${where} memory_mib`),
      models: spec === -1 ? [] : (r[spec] ?? "").split("|").filter((m) => m !== ""),
      policy: "",
    };
  });
}
