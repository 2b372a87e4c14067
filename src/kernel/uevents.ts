/**
 * The kernel's uevents about loop devices and their partitions, as a typed stream on
 * node's event loop: `add`, `remove` and `change` of block devices `loopN` and `loopNpM`.
 *
 * Which events matter to loopfs (drivers/block/loop.c, block/genhd.c, block/partitions):
 *   add/remove loopN      LOOP_CTL_ADD / LOOP_CTL_REMOVE (and the module's own devices)
 *   change loopN          LOOP_CONFIGURE / LOOP_SET_FD bind, LOOP_CLR_FD and autoclear
 *                         unbind (DISK_MEDIA_CHANGE=1 when the capacity changed)
 *   add/remove loopNpM    a partition scan, BLKPG (`partx -a`/`-d`), LOOP_CLR_FD
 *
 * The stream says only *which* device changed; what it is now is read from sysfs by the
 * caller (a hint, never the truth: a queue overflow loses events, and is reported).
 */
import { native, type FdWatcher } from './native.js';

export type UeventAction = 'add' | 'remove' | 'change';

export interface LoopUevent {
  action: UeventAction;
  /** loopN or loopNpM (the kernel's DEVNAME). */
  devname: string;
  /** N: the loop device the event is about, or whose partition it is. */
  disk: number;
  /** PARTN for a partition, null for the whole device. */
  partition: number | null;
  major: number;
  minor: number;
  /** DISK_MEDIA_CHANGE=1 (a bind or unbind changed the capacity). */
  mediaChange: boolean;
  seqnum: bigint | null;
}

const NAME_RE = /^loop(\d+)(?:p(\d+))?$/;
const ACTIONS: ReadonlySet<string> = new Set(['add', 'remove', 'change']);

/**
 * Parse one kernel uevent datagram ("ACTION@DEVPATH\0KEY=VALUE\0..."). Null for anything
 * that is not a block event about a loop device or one of its partitions.
 */
export function parseLoopUevent(msg: Buffer): LoopUevent | null {
  const fields = msg.toString('latin1').split('\0');
  const env = new Map<string, string>();
  for (const f of fields.slice(1)) {
    const eq = f.indexOf('=');
    if (eq > 0) env.set(f.slice(0, eq), f.slice(eq + 1));
  }
  const action = env.get('ACTION');
  const devname = env.get('DEVNAME');
  if (env.get('SUBSYSTEM') !== 'block' || !action || !ACTIONS.has(action) || !devname) return null;
  const m = NAME_RE.exec(devname);
  const major = Number(env.get('MAJOR'));
  const minor = Number(env.get('MINOR'));
  if (!m || !Number.isInteger(major) || !Number.isInteger(minor)) return null;
  const partn = env.get('PARTN');
  const devtype = env.get('DEVTYPE');
  // a partition names its disk in DEVNAME (loopNpM); PARTN must agree where present
  const partition = m[2] === undefined ? null : Number(m[2]);
  if ((partition === null) !== (devtype !== 'partition')) return null;
  if (partition !== null && partn !== undefined && Number(partn) !== partition) return null;
  const seq = env.get('SEQNUM');
  return {
    action: action as UeventAction,
    devname,
    disk: Number(m[1]),
    partition,
    major,
    minor,
    mediaChange: env.get('DISK_MEDIA_CHANGE') === '1',
    seqnum: seq && /^\d+$/.test(seq) ? BigInt(seq) : null,
  };
}

export interface LoopUeventHandlers {
  event(e: LoopUevent): void;
  /** Events were lost (the socket's queue overflowed): resynchronise from sysfs. */
  overflow(): void;
}

/**
 * A listening uevent socket. It costs nothing while no event arrives: the fd sits in
 * node's poll set, and the process sleeps.
 */
export class LoopUevents {
  private closed = false;

  private constructor(
    private readonly fd: number,
    private readonly watcher: FdWatcher,
  ) {}

  static open(h: LoopUeventHandlers): LoopUevents {
    const n = native();
    const fd = n.ueventOpen();
    let self: LoopUevents | null = null;
    let watcher: FdWatcher;
    try {
      watcher = n.watchFd(fd, () => self?.drain(h));
    } catch (e) {
      n.close(fd);
      throw e;
    }
    self = new LoopUevents(fd, watcher);
    return self;
  }

  /** Do not keep the process alive for this socket alone. */
  unref(): this {
    this.watcher.unref();
    return this;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.watcher.close();
    native().close(this.fd);
  }

  private drain(h: LoopUeventHandlers): void {
    if (this.closed) return;
    const { messages, overflow } = native().ueventRecv(this.fd);
    if (overflow) h.overflow();
    for (const m of messages) {
      const e = parseLoopUevent(m);
      if (e) h.event(e);
      if (this.closed) return;
    }
  }
}
