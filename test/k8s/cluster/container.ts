/**
 * Runs a program the way a container runtime runs a container, with no container engine: in its own
 * mount and UTS namespaces (and the pod's network namespace), on a root filesystem that is this machine's
 * seen through an overlay (so mount points can be made without touching the host) and then made
 * read-only when the container asks for readOnlyRootFilesystem, with its volumes and image files bind-mounted
 * where the pod spec says, a fresh /dev/shm and /proc, a clean environment (exactly the variables given),
 * the user and group it runs as, no_new_privs and no capabilities. /tmp is part of the read-only root: a
 * program that writes to TMPDIR fails here as it would in the cluster.
 *
 * Needs root (mount, unshare, nsenter, chroot, setpriv from util-linux and coreutils). The namespaces
 * live as long as the process: nothing is left on the host when it exits.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { createWriteStream, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

/** A path in the container: a host file or directory bound there, or a fresh tmpfs. */
export type ContainerMount =
  | { readonly kind: "bind"; readonly target: string; readonly source: string; readonly readOnly: boolean }
  | { readonly kind: "tmpfs"; readonly target: string };

export interface ContainerSpec {
  /** A scratch directory on the host for this container (its start script and log). */
  readonly dir: string;
  /** The network namespace to join (a name under /run/netns); the host's when unset. */
  readonly netns?: string;
  /** The hostname (the pod's name, as Kubernetes sets it). */
  readonly hostname?: string;
  /** Mounts, made in order: a parent before what is mounted inside it. */
  readonly mounts: readonly ContainerMount[];
  /** Symbolic links made in the container's root before it turns read-only: path -> target. */
  readonly links?: Readonly<Record<string, string>>;
  readonly readOnlyRootFilesystem: boolean;
  /** The user and group to run as; root when unset. */
  readonly user?: { readonly uid: number; readonly gid: number };
  /** allowPrivilegeEscalation: false. */
  readonly noNewPrivileges: boolean;
  /** capabilities: drop: [ALL]. */
  readonly dropAllCapabilities: boolean;
  /** The whole environment. */
  readonly env: Readonly<Record<string, string>>;
  /** Default "/". */
  readonly workingDir?: string;
  /** The program and its arguments; the program is looked up in env.PATH inside the container. */
  readonly argv: readonly string[];
}

export interface Container {
  readonly process: ChildProcess;
  /** The last 64 KiB the program printed (stdout and stderr); the whole output is in <dir>/output.log. */
  output(): string;
  /** Resolves when the program exited, with its exit code or the signal that ended it. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Single-quotes a string for sh. */
const q = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;

/** The shell script that builds the container's filesystem and execs the program. */
export function containerScript(spec: ContainerSpec): string {
  const fs = join(spec.dir, "fs");
  const lines = [
    "set -eu",
    `S=${q(fs)}`,
    'mkdir -p "$S"',
    'mount -t tmpfs -o mode=0700 kinfer-container "$S"',
    'mkdir "$S/upper" "$S/work" "$S/root"',
    'mount -t overlay kinfer-root -o "lowerdir=/,upperdir=$S/upper,workdir=$S/work" "$S/root"',
    'R="$S/root"',
    'mount -t proc proc "$R/proc"',
    'mount --rbind /dev "$R/dev"',
    'mount -t tmpfs -o mode=1777,nosuid,nodev shm "$R/dev/shm"',
    'mount --rbind /sys "$R/sys"',
  ];
  if (spec.hostname !== undefined) lines.push(`hostname ${q(spec.hostname)}`);
  for (const m of spec.mounts) {
    // The target as the container resolves it (/var/run is a link to /run, and an absolute link must not
    // lead out of the container's root to the host's).
    lines.push(`T="$R$(chroot "$R" /usr/bin/realpath -m ${q(m.target)})"`);
    const target = '"$T"';
    if (m.kind === "tmpfs") {
      lines.push(`mkdir -p ${target}`, `mount -t tmpfs -o mode=1777 tmpfs ${target}`);
      continue;
    }
    lines.push(
      `if [ -d ${q(m.source)} ]; then mkdir -p ${target}; else mkdir -p "$(dirname ${target})"; [ -e ${target} ] || touch ${target}; fi`,
      `mount --bind ${q(m.source)} ${target}`,
    );
    if (m.readOnly) lines.push(`mount -o remount,bind,ro ${target}`);
  }
  for (const [path, target] of Object.entries(spec.links ?? {})) {
    lines.push(
      `T="$R$(chroot "$R" /usr/bin/realpath -m ${q(path)})"`,
      'mkdir -p "$(dirname "$T")"',
      `ln -sfn ${q(target)} "$T"`,
    );
  }
  if (spec.readOnlyRootFilesystem) lines.push('mount -o remount,bind,ro "$R"');
  const privileges: string[] = [];
  if (spec.user !== undefined && spec.user.uid !== 0)
    privileges.push(`--reuid=${spec.user.uid}`, `--regid=${spec.user.gid}`, "--clear-groups");
  if (spec.noNewPrivileges) privileges.push("--no-new-privs");
  if (spec.dropAllCapabilities) privileges.push("--bounding-set=-all", "--inh-caps=-all");
  const env = Object.entries(spec.env).map(([k, v]) => q(`${k}=${v}`));
  lines.push(
    [
      'exec chroot "$R" /usr/bin/env -i',
      `-C ${q(spec.workingDir ?? "/")}`,
      ...env,
      "/usr/bin/setpriv",
      ...privileges,
      "--",
      ...spec.argv.map(q),
    ].join(" "),
  );
  return `${lines.join("\n")}\n`;
}

/** Starts the container; the program's output goes to <dir>/output.log. */
export function startContainer(spec: ContainerSpec): Container {
  mkdirSync(spec.dir, { recursive: true });
  const script = join(spec.dir, "start.sh");
  writeFileSync(script, containerScript(spec));
  const isolate = ["unshare", "--mount", "--uts", "--propagation", "private", "--", "sh", script];
  const [command, ...args] =
    spec.netns !== undefined ? ["nsenter", `--net=/run/netns/${spec.netns}`, "--", ...isolate] : isolate;
  const child = spawn(command as string, args, { stdio: ["ignore", "pipe", "pipe"] });
  const log = createWriteStream(join(spec.dir, "output.log"));
  let tail = "";
  const keep = (d: Buffer) => {
    log.write(d);
    tail = (tail + d.toString()).slice(-65_536);
  };
  child.stdout?.on("data", keep);
  child.stderr?.on("data", keep);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once("close", (code, signal) => {
      log.end();
      resolve({ code, signal });
    });
  });
  return { process: child, output: () => tail, exited };
}
