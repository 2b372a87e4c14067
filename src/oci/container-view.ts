/**
 * A running container's /dev as a live view of its instance (live-sync.ts), kept by the
 * OCI broker: the hook set the container up at createRuntime (container-dev.ts); from then
 * on devices the container gets later (pool refill, devices from the broker) and their
 * partitions appear, and those that leave disappear, as devtmpfs does it on the host.
 *
 *   /dev/loopK     -> loopfs/loopN     one per device; K keeps its number while the device
 *                                      stays, a new device takes the lowest free K (busybox
 *                                      probes loop0, loop1, ... and stops at a gap)
 *   /dev/loopKpM   -> loopfs/loopNpM   its partitions, under the container's name
 *   /sys/block     the hook's overlay, rewritten when the set of names changes, so that
 *                  util-linux names the new devices as /dev does
 *   device cgroup  (rootful, cgroup v1) `b MAJ:MIN rw` for each device and partition the
 *                  container gets, denied again when it leaves: the next holder of that
 *                  number is another instance's
 *
 * Everything goes through /proc/PID/root, checked against the init's start time first: a
 * pid reused by another process is never written to.
 */
import { spawnSync } from 'node:child_process';
import { appendFileSync, readFileSync, readlinkSync, statfsSync, symlinkSync } from 'node:fs';
import { dirname } from 'node:path';
import { hasCode } from '../kernel/errors.js';
import type { InstanceSnapshot, InstanceView, ViewChange } from '../instance/live-sync.js';
import { PinnedDir } from '../instance/pinned-dir.js';
import { actAs, CONTAINER_INSTANCE_DIR } from './container-dev.js';
import { deviceCgroupAllowFile } from './device-cgroup.js';
import { processStartTime } from './record.js';

const VIEW_NAME = /^loop(\d+)(?:p(\d+))?$/;
const TMPFS_MAGIC = 0x01021994;

export interface ContainerViewOptions {
  /** Host pid of the container's init and its start time (the record's). */
  pid: number;
  startTime: string;
  /** Grant devices in the container's v1 device cgroup (rootful containers). */
  deviceCgroup: boolean;
}

export class ContainerGoneError extends Error {}

export class ContainerView implements InstanceView {
  /** Devices granted in the device cgroup by this view ("MAJ:MIN"). */
  private granted: Set<string> | null = null;

  constructor(private readonly opts: ContainerViewOptions) {}

  get name(): string {
    return `container init ${this.opts.pid}`;
  }

  alive(): boolean {
    return processStartTime(this.opts.pid) === this.opts.startTime;
  }

  apply(snap: InstanceSnapshot): ViewChange {
    if (!this.alive()) throw new ContainerGoneError(`container init ${this.opts.pid} is gone`);
    const change = this.syncLinks(snap);
    if (this.opts.deviceCgroup) this.syncDeviceCgroup(snap);
    return change;
  }

  /** The links in /dev; rewrites /sys/block when the names of whole devices changed. */
  private syncLinks(snap: InstanceSnapshot): ViewChange {
    const change: ViewChange = { added: [], removed: [] };
    const dev = PinnedDir.open(`/proc/${this.opts.pid}/root/dev`);
    const restore = actAs(snap.owner);
    try {
      // what the container has now: name -> link target (null: not one of our links)
      const present = new Map<string, string | null>();
      for (const name of dev.list()) if (VIEW_NAME.test(name)) present.set(name, linkTarget(dev, name));
      const wantedDisks = snap.nodes.filter((n) => n.partition === null);
      // keep K for devices that stay, give new ones the lowest free K
      const kOf = new Map<number, number>();
      const used = new Set<number>();
      for (const [name, target] of present) {
        const m = VIEW_NAME.exec(name)!;
        const t = target && new RegExp(`^${CONTAINER_INSTANCE_DIR}/loop(\\d+)$`).exec(target);
        if (m[2] !== undefined || !t) continue;
        const disk = Number(t[1]);
        if (wantedDisks.some((d) => d.disk === disk) && !kOf.has(disk)) {
          kOf.set(disk, Number(m[1]));
          used.add(Number(m[1]));
        }
      }
      for (const d of wantedDisks) {
        if (kOf.has(d.disk)) continue;
        let k = 0;
        while (used.has(k)) k++;
        kOf.set(d.disk, k);
        used.add(k);
      }
      const wanted = new Map<string, string>();
      for (const n of snap.nodes) {
        const k = kOf.get(n.disk)!;
        wanted.set(n.partition === null ? `loop${k}` : `loop${k}p${n.partition}`, `${CONTAINER_INSTANCE_DIR}/${n.name}`);
      }
      for (const [name, target] of present) {
        if (wanted.get(name) === target) continue;
        dev.unlinkQuiet(name);
        change.removed.push(name);
      }
      for (const [name, target] of wanted) {
        if (present.get(name) === target) continue;
        symlinkSync(target, `/proc/self/fd/${dev.fd}/${name}`);
        change.added.push(name);
      }
      const diskNames = (names: string[]) => names.some((n) => VIEW_NAME.exec(n)![2] === undefined);
      if (diskNames(change.added) || diskNames(change.removed)) {
        const names = [...kOf].sort((a, b) => a[1] - b[1]).map(([disk, k]) => [`loop${k}`, `loop${disk}`] as [string, string]);
        this.rewriteSysBlock(names);
      }
    } finally {
      restore();
      dev.close();
    }
    return change;
  }

  /**
   * The hook's /sys/block overlay (a read-only tmpfs), with its loop entries made anew:
   * remounted read-write for the moment of the change, inside the container's mount
   * namespace (and user namespace, where it has one: the tmpfs is owned by it). Loop
   * entries are made from the highest K down: tmpfs lists the newest entry first, and
   * util-linux lists in readdir order, so loop0 comes first. Without the overlay (the
   * container has no sysfs of its own) there is nothing to rewrite.
   */
  private rewriteSysBlock(names: Array<[string, string]>): void {
    const sys = `/proc/${this.opts.pid}/root/sys/block`;
    try {
      if (statfsSync(sys).type !== TMPFS_MAGIC) return;
    } catch {
      return;
    }
    const entries: string[] = [];
    for (const [name, kernelName] of [...names].reverse()) {
      entries.push(name, dirname(`/sys/devices/virtual/block/${kernelName}/x`));
    }
    const script = [
      'set -e',
      'mount -o remount,rw,nosuid,nodev,noexec /sys/block',
      'for e in /sys/block/loop*; do [ -L "$e" ] && rm -f "$e"; done',
      'while [ "$#" -gt 0 ]; do ln -s "$2" "/sys/block/$1"; shift 2; done',
      'mount -o remount,ro,nosuid,nodev,noexec /sys/block',
    ].join('\n');
    const ns = ['-m'];
    if (readlinkSync(`/proc/${this.opts.pid}/ns/user`) !== readlinkSync('/proc/self/ns/user')) ns.push('-U', '--preserve-credentials');
    const r = spawnSync('nsenter', ['-t', String(this.opts.pid), ...ns, '--', 'sh', '-c', script, 'loopfs-sysblock', ...entries], {
      encoding: 'utf8',
      timeout: 10_000,
    });
    if (r.error || r.status !== 0) {
      throw new Error(`cannot update /sys/block of container init ${this.opts.pid}: ${r.error?.message ?? (r.stderr.trim() || `exit ${r.status}`)}`);
    }
  }

  /** `b MAJ:MIN rw` for every node of the snapshot; what this view granted and is gone, denied. */
  private syncDeviceCgroup(snap: InstanceSnapshot): void {
    const allow = deviceCgroupAllowFile(this.opts.pid);
    if (!allow) return;
    const dir = dirname(allow);
    const wanted = new Set(snap.nodes.map((n) => `${n.major}:${n.minor}`));
    const listed = new Set<string>();
    for (const line of readFileSync(`${dir}/devices.list`, 'utf8').split('\n')) {
      if (line.startsWith('a ')) return; // everything allowed already (a privileged container)
      const m = /^b (\d+:\d+) /.exec(line);
      if (m) listed.add(m[1]);
    }
    // after a restart of the broker: what the hook or an earlier run granted for devices
    // the instance holds is ours; rules for anything else came from the container's config
    if (this.granted === null) this.granted = new Set([...listed].filter((d) => wanted.has(d)));
    for (const d of wanted) {
      if (listed.has(d) && this.granted.has(d)) continue;
      appendFileSync(allow, `b ${d} rw`); // one rule per write(2)
      this.granted.add(d);
    }
    for (const d of [...this.granted]) {
      if (wanted.has(d)) continue;
      try {
        appendFileSync(`${dir}/devices.deny`, `b ${d} rwm`);
      } catch (e) {
        if (!hasCode(e, 'ENOENT')) throw e; // the cgroup went with the container
      }
      this.granted.delete(d);
    }
  }
}

function linkTarget(dev: PinnedDir, name: string): string | null {
  try {
    return readlinkSync(`/proc/self/fd/${dev.fd}/${name}`);
  } catch (e) {
    if (hasCode(e, 'EINVAL', 'ENOENT')) return null; // not a symlink, or gone meanwhile
    throw e;
  }
}
