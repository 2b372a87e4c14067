/**
 * A running container's /dev as a live view of its instance (live-sync.ts), kept by the
 * OCI broker: the hook set the container up at createRuntime (container-dev.ts); from then
 * on devices the container gets later (pool refill, devices from the broker) and their
 * partitions appear, and those that leave disappear, as devtmpfs does it on the host.
 *
 *   /dev/loopK     -> loopfs/loopN     one per device; K keeps its number while the device
 *                                      stays, a new device takes the lowest free K, and an
 *                                      unbound device moves down into a gap another one left
 *                                      (busybox probes loop0, loop1, ... and stops at a gap)
 *   /dev/loopKpM   -> loopfs/loopNpM   its partitions, under the container's name
 *   /sys/block     the hook's overlay, replaced once by one of the view's own (a read-only
 *                  tmpfs it keeps a writable mount of) and rewritten through that mount
 *                  when the set of names changes, so util-linux names new devices as /dev
 *   device cgroup  (rootful, cgroup v1) `b MAJ:MIN rw` for each device and partition the
 *                  container gets, denied again when it leaves: the next holder of that
 *                  number is another instance's
 *
 * Everything goes through /proc/PID/root, opened first and then checked against the init's
 * start time: a pid reused by another process is never written to. Inside the container's
 * root nothing is followed that its owner could have planted (no symlink for /dev or
 * /sys/block), and no program of the container's is ever run: the /sys/block overlay is
 * built here with the mount API and only attached in the container's namespaces (the
 * native nsMoveMount child). Names in /dev that are not our links (a node the operator
 * passed with --device) are left alone and their numbers skipped.
 *
 * Before the container is set up (the hook's createRuntime, before pivot_root) its
 * /proc/PID/root is still the host's tree: a view applies only once the container's
 * /dev/loopfs is the instance directory itself (same device and inode: the hook's bind).
 */
import { appendFileSync, existsSync, readdirSync, readFileSync, readlinkSync, renameSync, statSync, symlinkSync } from 'node:fs';
import { dirname } from 'node:path';
import { hasCode } from '../kernel/errors.js';
import { native } from '../kernel/native.js';
import type { InstanceSnapshot, InstanceView, ViewChange } from '../instance/live-sync.js';
import { PinnedDir } from '../instance/pinned-dir.js';
import { actAs, CONTAINER_INSTANCE_DIR, sysBlockEntries, type ContainerLoopName } from './container-dev.js';
import { deviceCgroupAllowFile } from './device-cgroup.js';
import { processStartTime } from './record.js';

const VIEW_NAME = /^loop(\d+)(?:p(\d+))?$/;
const OUR_TARGET = new RegExp(`^${CONTAINER_INSTANCE_DIR}/loop(\\d+)(?:p(\\d+))?$`);
/** Links are made under this name and renamed into place (never a loop name: nobody probes it). */
const TEMP_PREFIX = ".loopfs-link.";
const TMPFS_MAGIC = 0x01021994;

export interface ContainerViewOptions {
  /** Host pid of the container's init and its start time (the record's). */
  pid: number;
  startTime: string;
  /** Grant devices in the container's v1 device cgroup (rootful containers). */
  deviceCgroup: boolean;
}

export class ContainerGoneError extends Error {}

/** The container's root and /dev, opened and then checked to belong to its init. */
interface Opened {
  root: PinnedDir;
  dev: PinnedDir;
}

export class ContainerView implements InstanceView {
  /** The container's number K of each device (loopK -> loopfs/loopN) after the last apply. */
  private lastK = new Map<number, number>();

  /** Highest /dev/loopK first: a device leaving from the top leaves no gap below. */
  leaveOrder(candidates: number[]): number[] {
    const k = (m: number) => this.lastK.get(m) ?? -1;
    return [...candidates].sort((a, b) => k(b) - k(a));
  }

  /** Devices granted in the device cgroup by this view ("MAJ:MIN"). */
  private granted: Set<string> | null = null;
  /** Our /sys/block overlay, writable (a detached mount of the tmpfs the container sees read-only). */
  private sysRw = -1;
  /** The whole-device names (container name -> kernel name) /sys/block shows now, as we made it. */
  private sysNames: string | null = null;

  constructor(private readonly opts: ContainerViewOptions) {}

  get name(): string {
    return `container init ${this.opts.pid}`;
  }

  get pid(): number {
    return this.opts.pid;
  }

  alive(): boolean {
    return processStartTime(this.opts.pid) === this.opts.startTime;
  }

  /** Give up what the view holds (its /sys/block mount). */
  close(): void {
    if (this.sysRw >= 0) native().close(this.sysRw);
    this.sysRw = -1;
  }

  apply(snap: InstanceSnapshot): ViewChange {
    const opened = this.open(snap.dir);
    if (!opened) return { added: [], removed: [] }; // not set up yet: the hook still runs
    let change: ViewChange;
    let kOf: Map<number, number>;
    try {
      ({ change, kOf } = this.syncLinks(opened.dev, snap));
      this.lastK = kOf;
      const names = [...kOf].sort((a, b) => a[1] - b[1]).map(([disk, k]) => ({ name: `loop${k}`, node: `loop${disk}`, minor: disk }));
      const key = namesKey(names.map((d) => [d.name, d.node]));
      if (key !== this.sysNames) {
        this.syncSysBlock(opened.root, names, key);
        this.sysNames = key;
      }
    } finally {
      opened.dev.close();
      opened.root.close();
    }
    if (this.opts.deviceCgroup) this.syncDeviceCgroup(snap);
    return change;
  }

  /**
   * The container's root and /dev, or null while /dev/loopfs is not the instance (before
   * pivot_root /proc/PID/root is the host's tree). Throws ContainerGoneError for a dead init.
   */
  private open(dir: string): Opened | null {
    let root: PinnedDir;
    try {
      root = PinnedDir.open(`/proc/${this.opts.pid}/root`);
    } catch (e) {
      if (hasCode(e, 'ENOENT', 'ESRCH', 'EACCES')) throw new ContainerGoneError(`container init ${this.opts.pid} is gone`);
      throw e;
    }
    // opened first, checked second: a pid reused in between fails the check
    if (!this.alive()) {
      root.close();
      throw new ContainerGoneError(`container init ${this.opts.pid} is gone`);
    }
    let dev: PinnedDir | null = null;
    try {
      dev = root.openSub('dev');
      const bound = dev.openSub(CONTAINER_INSTANCE_DIR);
      let st;
      try {
        st = native().fstat(bound.fd);
      } finally {
        bound.close();
      }
      const inst = statSync(dir, { bigint: true });
      if (st.dev !== inst.dev || st.ino !== inst.ino) throw Object.assign(new Error('not the instance'), { code: 'ENOTREADY' });
      return { root, dev };
    } catch (e) {
      dev?.close();
      root.close();
      if (hasCode(e, 'ENOENT', 'ENOTDIR', 'ELOOP', 'ENOTREADY')) return null;
      throw e;
    }
  }

  /** The links in /dev; returns the container name K of every whole device. */
  private syncLinks(dev: PinnedDir, snap: InstanceSnapshot): { change: ViewChange; kOf: Map<number, number> } {
    const change: ViewChange = { added: [], removed: [] };
    const restore = actAs(snap.owner);
    try {
      // ours: name -> target (a link into loopfs/); every other loop name is not ours to touch
      const ours = new Map<string, string>();
      const foreign = new Set<string>();
      for (const name of dev.list()) {
        if (!VIEW_NAME.test(name)) continue;
        const target = linkTarget(dev, name);
        if (target !== null && OUR_TARGET.test(target)) ours.set(name, target);
        else foreign.add(name);
      }
      const wantedDisks = snap.nodes.filter((n) => n.partition === null);
      const held = new Set(wantedDisks.map((d) => d.disk));
      // keep K for devices that stay, give new ones the lowest free K
      const kOf = new Map<number, number>();
      const used = new Set<number>();
      for (const name of foreign) {
        const m = VIEW_NAME.exec(name)!;
        if (m[2] === undefined) used.add(Number(m[1]));
      }
      for (const [name, target] of ours) {
        const m = VIEW_NAME.exec(name)!;
        const t = OUR_TARGET.exec(target)!;
        if (m[2] !== undefined || t[2] !== undefined) continue;
        const disk = Number(t[1]);
        const k = Number(m[1]);
        if (held.has(disk) && !kOf.has(disk) && !used.has(k)) {
          kOf.set(disk, k);
          used.add(k);
        }
      }
      for (const d of wantedDisks) {
        if (kOf.has(d.disk)) continue;
        let k = 0;
        while (used.has(k)) k++;
        kOf.set(d.disk, k);
        used.add(k);
      }
      // busybox probes loop0, loop1, ... and stops at the first gap, which a device leaving
      // leaves: an unbound device (nobody inside refers to it) moves down into the lowest gap
      const withPartitions = new Set(snap.nodes.filter((n) => n.partition !== null).map((n) => n.disk));
      for (const [disk, k] of [...kOf].sort((a, b) => b[1] - a[1])) {
        let gap = 0;
        while (used.has(gap)) gap++;
        if (gap >= k) break;
        if (withPartitions.has(disk) || isBound(disk)) continue;
        used.delete(k);
        used.add(gap);
        kOf.set(disk, gap);
      }
      const wanted = new Map<string, string>();
      for (const n of snap.nodes) {
        const k = kOf.get(n.disk);
        if (k === undefined) continue; // a partition listed without its device: never
        const name = n.partition === null ? `loop${k}` : `loop${k}p${n.partition}`;
        if (!foreign.has(name)) wanted.set(name, `${CONTAINER_INSTANCE_DIR}/${n.name}`);
      }
      // every wanted name first, each made under a temporary name and renamed over the old
      // link (atomic): a name that stays in the view never goes missing, not even while it
      // changes target (busybox probing then would stop there, or try mknod); only then
      // what is no longer wanted goes
      const base = `/proc/self/fd/${dev.fd}`;
      for (const name of dev.list()) if (name.startsWith(TEMP_PREFIX)) dev.unlinkQuiet(name); // a killed broker's
      for (const [name, target] of wanted) {
        if (ours.get(name) === target) continue;
        const temp = `${TEMP_PREFIX}${process.pid}.${name}`;
        dev.unlinkQuiet(temp);
        symlinkSync(target, `${base}/${temp}`);
        try {
          renameSync(`${base}/${temp}`, `${base}/${name}`);
        } catch (e) {
          dev.unlinkQuiet(temp);
          throw e;
        }
        if (ours.has(name)) change.removed.push(name);
        change.added.push(name);
      }
      for (const [name] of ours) {
        if (wanted.has(name)) continue;
        dev.unlinkQuiet(name);
        change.removed.push(name);
      }
      return { change, kOf };
    } finally {
      restore();
    }
  }

  /**
   * /sys/block as util-linux must see it: every non-loop block device as on the host, and
   * the container's loop names linked to the real sysfs directories of its devices. The
   * hook's overlay is read-only (superblock and mount) and could be changed only by a
   * process inside the container's mount namespace; so at the first change the view makes
   * an overlay of its own (fsopen/fsmount here, on the host), attaches a read-only clone
   * of it over /sys/block in the container's namespaces and keeps the writable original:
   * every later change is written through that, and the container sees it at once. Where
   * the kernel cannot clone a detached mount (before 6.15), each change attaches a fresh
   * read-only overlay instead. Without an overlay (no sysfs of its own) nothing is done.
   */
  private syncSysBlock(root: PinnedDir, names: ContainerLoopName[], key: string): void {
    const n = native();
    const c = n.constants;
    if (this.sysRw < 0) {
      let sys: PinnedDir;
      try {
        sys = root.openSub('sys');
      } catch (e) {
        if (hasCode(e, 'ENOENT', 'ENOTDIR', 'ELOOP')) return;
        throw e;
      }
      let block: PinnedDir;
      try {
        block = sys.openSub('block');
      } catch (e) {
        if (hasCode(e, 'ENOENT', 'ENOTDIR', 'ELOOP')) return;
        throw e;
      } finally {
        sys.close();
      }
      try {
        if (n.statfs(block.fd).type !== TMPFS_MAGIC) return; // the container's own sysfs: not ours
        // the hook's overlay (or ours, before a restart) shows these names already
        if (this.sysNames === null && namesKey(loopEntries(block)) === key) return;
      } finally {
        block.close();
      }
    }
    const entries = sysBlockEntries(names);
    if (this.sysRw >= 0) {
      // only what differs, and no entry that stays is ever missing (a tool inside may be
      // reading it right now): a changed link is replaced by rename(2); new ones are made
      // from the highest name down (tmpfs lists the newest first)
      const base = `/proc/self/fd/${this.sysRw}`;
      const want = new Map(entries);
      for (const name of listFd(this.sysRw)) {
        if (!want.has(name)) n.unlinkat(this.sysRw, name, 0);
      }
      for (const [name, target] of entries) {
        let now: string | null = null;
        try {
          now = readlinkSync(`${base}/${name}`);
        } catch (e) {
          if (!hasCode(e, 'ENOENT', 'EINVAL')) throw e;
        }
        if (now === target) continue;
        if (now === null) {
          symlinkSync(target, `${base}/${name}`);
        } else {
          symlinkSync(target, `${base}/.${name}.new`);
          renameSync(`${base}/.${name}.new`, `${base}/${name}`);
        }
      }
      return;
    }
    const fsfd = n.fsopen('tmpfs', 0);
    let rw = -1;
    try {
      n.fsconfigSetString(fsfd, 'source', 'loopfs-sysblock');
      n.fsconfigSetString(fsfd, 'mode', '0755');
      n.fsconfigSetString(fsfd, 'size', '64k');
      n.fsconfigCreate(fsfd);
      rw = n.fsmount(fsfd, c.FSMOUNT_CLOEXEC, c.MOUNT_ATTR_NOSUID | c.MOUNT_ATTR_NODEV | c.MOUNT_ATTR_NOEXEC);
    } finally {
      n.close(fsfd);
    }
    let ro = -1;
    try {
      for (const [name, target] of entries) symlinkSync(target, `/proc/self/fd/${rw}/${name}`);
      try {
        ro = n.openTree(rw, '', c.OPEN_TREE_CLONE | c.OPEN_TREE_CLOEXEC | c.AT_EMPTY_PATH);
      } catch (e) {
        if (!hasCode(e, 'EINVAL')) throw e;
        ro = rw; // no clone of a detached mount: this one goes in, read-only, and a change makes another
        rw = -1;
      }
      n.mountSetattr(ro, '', c.AT_EMPTY_PATH, { attrSet: c.MOUNT_ATTR_RDONLY });
      this.moveIntoContainer(ro, '/sys/block');
      this.sysRw = rw;
      rw = -1;
    } finally {
      if (ro >= 0) n.close(ro);
      if (rw >= 0) n.close(rw);
    }
  }

  /** move_mount(mntFd -> path) in the container's user and mount namespaces, root and cwd. */
  private moveIntoContainer(mntFd: number, path: string): void {
    const n = native();
    const c = n.constants;
    const base = `/proc/${this.opts.pid}`;
    const fds: number[] = [];
    try {
      const own = (p: string, flags: number) => {
        const fd = n.open(p, flags);
        fds.push(fd);
        return fd;
      };
      const usernsFd = own(`${base}/ns/user`, c.O_RDONLY);
      const mntnsFd = own(`${base}/ns/mnt`, c.O_RDONLY);
      const rootFd = own(`${base}/root`, c.O_PATH | c.O_DIRECTORY);
      const cwdFd = own(`${base}/root`, c.O_PATH | c.O_DIRECTORY);
      if (!this.alive()) throw new ContainerGoneError(`container init ${this.opts.pid} is gone`);
      n.nsMoveMount({ usernsFd, mntnsFd, rootFd, cwdFd }, mntFd, path);
    } finally {
      for (const fd of fds) n.close(fd);
    }
  }

  /**
   * `b MAJ:MIN rw` for every node of the snapshot the cgroup does not grant already (a
   * partition is 259:M, not covered by a `b 7:* rw` rule); what this view granted and is
   * gone, denied.
   */
  private syncDeviceCgroup(snap: InstanceSnapshot): void {
    const allow = deviceCgroupAllowFile(this.opts.pid);
    if (!allow) return;
    const dir = dirname(allow);
    const wanted = new Set(snap.nodes.map((n) => `${n.major}:${n.minor}`));
    const exact = new Set<string>();
    const broad: Array<{ major: string; minor: string }> = [];
    for (const line of readFileSync(`${dir}/devices.list`, 'utf8').split('\n')) {
      if (line.startsWith('a ')) return; // everything allowed already (a privileged container)
      const m = /^b (\d+|\*):(\d+|\*) (\S+)$/.exec(line);
      if (!m || !m[3].includes('r') || !m[3].includes('w')) continue;
      if (m[1] !== '*' && m[2] !== '*') exact.add(`${m[1]}:${m[2]}`);
      else broad.push({ major: m[1], minor: m[2] });
    }
    const coveredBroadly = (d: string) => {
      const [major, minor] = d.split(':');
      return broad.some((r) => (r.major === '*' || r.major === major) && (r.minor === '*' || r.minor === minor));
    };
    // after a restart of the broker: what the hook or an earlier run granted for devices
    // the instance holds is ours; rules for anything else came from the container's config
    if (this.granted === null) this.granted = new Set([...exact].filter((d) => wanted.has(d)));
    for (const d of wanted) {
      if (exact.has(d) || coveredBroadly(d)) continue;
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

/** The whole-device names of an overlay as [container name, kernel name] (loopK -> .../block/loopN). */
function loopEntries(block: PinnedDir): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  for (const name of block.list()) {
    if (!/^loop\d+$/.test(name)) continue;
    const target = linkTarget(block, name);
    const m = target === null ? null : /\/(loop\d+)$/.exec(target);
    out.push([name, m ? m[1] : '?']);
  }
  return out;
}

function namesKey(names: Array<[string, string]>): string {
  return names
    .map(([name, node]) => `${name}=${node}`)
    .sort()
    .join(' ');
}

/** Names in a directory given by fd. */
function listFd(fd: number): string[] {
  return readdirSync(`/proc/self/fd/${fd}`);
}

/** Whether loopN is bound to a file now (the host's sysfs). */
function isBound(disk: number): boolean {
  return existsSync(`/sys/block/loop${disk}/loop/backing_file`);
}

function linkTarget(dev: PinnedDir, name: string): string | null {
  try {
    return readlinkSync(`/proc/self/fd/${dev.fd}/${name}`);
  } catch (e) {
    if (hasCode(e, 'EINVAL', 'ENOENT')) return null; // not a symlink, or gone meanwhile
    throw e;
  }
}
