/**
 * The cluster tests' pod network, inside this machine: every pod gets a network namespace of its own
 * (its own loopback and ports, as in a real cluster: two gateway pods both listen on :8080, a sidecar is
 * reached on the pod's 127.0.0.1) with one address from its node's pod CIDR. All pods sit on one Linux
 * bridge, itself in a network namespace of its own, with a /16 that is on-link everywhere; the host joins
 * that bridge with the address the apiserver serves on, so pods reach the apiserver, each other, and the
 * test process reaches them, with no routing, NAT or forwarding on the host.
 *
 * The /16 is 10.<n>.0.0/16 with <n> chosen at random among those no route or address of the host uses;
 * node i's pod CIDR is 10.<n>.<i+1>.0/24 and the host is 10.<n>.255.254. Everything is removed by
 * destroy() (deleting the namespaces deletes their links). Needs root and iproute2.
 *
 * A pod's eth0 has a MAC address made from its IP (0a:58 then the four bytes), as the CNI bridge plugin
 * does: an address freed by one pod is soon given to the next (the kubelet stand-in hands out the lowest
 * free one), and with a random MAC every peer's ARP cache would keep sending the new pod's packets to the
 * old pod's MAC for seconds (a gateway's connection attempts then time out: seen when KEDA took a model to
 * zero and back).
 */
import { execFileSync } from "node:child_process";

export interface PodNetwork {
  /** The host's address on the pod network (the apiserver serves here). */
  readonly hostAddress: string;
  /** The pod CIDR of node `index` (0-based). */
  nodeCidr(index: number): string;
  /** Creates a pod's network namespace with `ip` on eth0; resolves with the namespace's name. */
  addPod(ip: string): string;
  /** Deletes a pod's network namespace. */
  removePod(netns: string): void;
  destroy(): void;
}

const ip = (...args: string[]) =>
  execFileSync("ip", args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });

/** A second octet n such that nothing on this host uses 10.n.0.0/16. */
function freeOctet(): number {
  const used = `${ip("-4", "route", "show", "table", "all")}\n${ip("-4", "addr")}`;
  const candidates = Array.from({ length: 100 }, (_, i) => 100 + i).filter(
    (n) => !new RegExp(`\\b10\\.${n}\\.`).test(used),
  );
  const n = candidates[Math.floor(Math.random() * candidates.length)];
  if (n === undefined) throw new Error("no free 10.x.0.0/16 for the pod network");
  return n;
}

export function createPodNetwork(): PodNetwork {
  const n = freeOctet();
  // Interface names are at most 15 characters: short ids.
  const id = `${process.pid % 10_000}${String.fromCharCode(97 + Math.floor(Math.random() * 26))}`;
  const bridgeNs = `kinfer-net-${id}`;
  const hostEnd = `knh${id}`;
  const hostAddress = `10.${n}.255.254`;
  ip("netns", "add", bridgeNs);
  ip("-n", bridgeNs, "link", "add", "br0", "type", "bridge");
  ip("-n", bridgeNs, "link", "set", "br0", "up");
  ip("link", "add", hostEnd, "type", "veth", "peer", "name", "uplink", "netns", bridgeNs);
  ip("-n", bridgeNs, "link", "set", "uplink", "master", "br0", "up");
  ip("addr", "add", `${hostAddress}/16`, "dev", hostEnd);
  ip("link", "set", hostEnd, "up");
  let pods = 0;
  const podNamespaces = new Set<string>();

  return {
    hostAddress,
    nodeCidr: (index) => {
      if (index < 0 || index > 250) throw new RangeError("node index 0 to 250");
      return `10.${n}.${index + 1}.0/24`;
    },
    addPod(address) {
      pods++;
      const netns = `kinfer-pod-${id}-${pods}`;
      const bridgeEnd = `kp${id}x${pods}`.slice(0, 15);
      ip("netns", "add", netns);
      podNamespaces.add(netns);
      ip("-n", bridgeNs, "link", "add", bridgeEnd, "type", "veth", "peer", "name", "eth0", "netns", netns);
      ip("-n", bridgeNs, "link", "set", bridgeEnd, "master", "br0", "up");
      const mac = `0a:58:${address
        .split(".")
        .map((b) => Number(b).toString(16).padStart(2, "0"))
        .join(":")}`;
      ip("-n", netns, "link", "set", "eth0", "address", mac);
      ip("-n", netns, "addr", "add", `${address}/16`, "dev", "eth0");
      ip("-n", netns, "link", "set", "eth0", "up");
      ip("-n", netns, "link", "set", "lo", "up");
      return netns;
    },
    removePod(netns) {
      if (!podNamespaces.delete(netns)) return;
      try {
        ip("netns", "del", netns);
      } catch {}
    },
    destroy() {
      for (const netns of podNamespaces) {
        try {
          ip("netns", "del", netns);
        } catch {}
      }
      podNamespaces.clear();
      try {
        ip("link", "del", hostEnd);
      } catch {}
      try {
        ip("netns", "del", bridgeNs);
      } catch {}
    },
  };
}
