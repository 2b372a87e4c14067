/**
 * A brokered instance, seen from a client: `DIR/loop-control` is a socket served by
 * `loopfs serve` (src/broker/), and every operation that needs privilege is a request to
 * it. losetup and mount.loop use this scope when they cannot manage the instance
 * themselves (resolve.ts: DIR/.loopfs is root's, so an unprivileged caller — also the root
 * of a user namespace — finds only the socket), and nothing else changes for the user.
 *
 * The client is synchronous (losetup is): one blocking socket, one request at a time,
 * each answered before the next is sent. The backing file is opened here, with the
 * caller's own permissions, and its fd passed to the broker (SCM_RIGHTS); the broker never
 * opens a path for a client. Device attributes for listings come from the broker (it can
 * read LOOP_GET_STATUS64; the client may not be able to open the node), device names are
 * composed from DIR as the client sees it (a container may see DIR elsewhere).
 *
 * Devices are identified by minor on the wire; a device operand is checked to be a loop
 * device (stat) and one of the instance's (the broker's list), as in a local instance.
 */
import { resolve as resolvePath } from 'node:path';
import { AttachError, type AttachRequest } from '../kernel/attach.js';
import { NoFreeDeviceError, type Allocated } from '../kernel/allocate.js';
import { LOOP_MAJOR } from '../kernel/devnum.js';
import { hasCode, isSysError, sysError, toSysError, type SysError } from '../kernel/errors.js';
import { LoopDevice } from '../kernel/loop-device.js';
import { native, type LoopInfo64 } from '../kernel/native.js';
import { SysfsLoop, loopNamesInSysfs } from '../kernel/sysfs.js';
import {
  BROKER_SOCKET,
  decodeReply,
  encodeMessage,
  MAX_MESSAGE_BYTES,
  MAX_MESSAGE_FDS,
  PROTOCOL_VERSION,
  ProtocolError,
  type DeviceEntry,
  type ErrorBody,
  type MountAttrName,
  type Op,
} from '../protocol/broker.js';
import { QuotaError } from './local-instance.js';
import { DeviceNames } from './device-names.js';
import { checkMember, detachEach, devicePathIn, type BrokeredMounts, type DeviceControl, type LoopScope } from './scope.js';

/** How long a client waits for each broker reply unless $LOOPFS_BROKER_TIMEOUT (seconds, 0 = for ever) says otherwise. */
export const DEFAULT_BROKER_TIMEOUT_S = 30;

/** The reply timeout in ms from $LOOPFS_BROKER_TIMEOUT (0: none); a malformed value gives the default. */
export function brokerTimeoutMs(env: NodeJS.ProcessEnv): number {
  const raw = env.LOOPFS_BROKER_TIMEOUT;
  const s = raw !== undefined && /^\d+(\.\d+)?$/.test(raw.trim()) ? Number(raw) : DEFAULT_BROKER_TIMEOUT_S;
  return Math.min(Math.round(s * 1000), 0xffffffff);
}

/** The broker refused or failed a request that is not about one device or file. */
export class BrokerError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly kind?: string,
  ) {
    super(message);
    this.name = 'BrokerError';
  }
}

/** The broker cannot be reached or does not speak our protocol. */
export class BrokerUnavailableError extends Error {
  constructor(
    readonly dir: string,
    readonly reason: string,
  ) {
    super(`${dir}: ${reason}`);
    this.name = 'BrokerUnavailableError';
  }
}

/** A device as the broker described it: listings never need to open the node. */
class BrokerDevice extends LoopDevice {
  constructor(
    path: string,
    private readonly entry: DeviceEntry,
  ) {
    super(path);
  }
  override devno(): [number, number] {
    return [LOOP_MAJOR, this.entry.minor];
  }
  override isBound(): boolean {
    return this.entry.bound;
  }
  /**
   * The kernel names the backing file relative to the root of whoever reads sysfs: read it
   * ourselves when we can (a container then sees its own path, as util-linux inside it
   * would), else take the broker's view.
   */
  override backingFile(): string | null {
    if (!this.entry.bound) return null;
    return new SysfsLoop(`/sys/dev/block/${LOOP_MAJOR}:${this.entry.minor}`).backingFile() ?? this.entry.backingFile;
  }
  override offset(): bigint | null {
    return big(this.entry.offset);
  }
  override sizelimit(): bigint | null {
    return big(this.entry.sizelimit);
  }
  override autoclear(): boolean {
    return this.entry.autoclear;
  }
  override readOnly(): boolean {
    return this.entry.readOnly;
  }
  override directIo(): boolean {
    return this.entry.directIo;
  }
  override partscan(): boolean {
    return this.entry.partscan;
  }
  override logicalBlockSize(): bigint | null {
    return big(this.entry.logSec);
  }
  override backingIds(): { dev: bigint; ino: bigint } | null {
    const dev = big(this.entry.backingDev);
    const ino = big(this.entry.backingIno);
    return dev === null || ino === null ? null : { dev, ino };
  }
  /** The encryption fields of loop_info64 are not part of the listing (loopfs never sets them). */
  override tryStatus(): LoopInfo64 | null {
    return null;
  }
}

function big(v: string | null): bigint | null {
  return v === null ? null : BigInt(v);
}

export interface BrokerMount {
  /** The detached mount: attach it with move_mount, then close it. */
  fd: number;
  fstype: string;
  readOnly: boolean;
  idmapped: boolean;
  /** The FUSE driver serving the mount, or null for a kernel mount. */
  fuse: string | null;
}

export interface MountOptions {
  fstype?: string | null;
  readOnly?: boolean;
  attrs?: MountAttrName[];
  /** true: through a FUSE driver; false: by the kernel; undefined: as the broker prefers. */
  fuse?: boolean;
}

export class BrokeredInstance implements LoopScope, DeviceControl, BrokeredMounts {
  readonly dir: string;
  readonly controlPath: string;
  /** The broker changes live devices (the kernel wants CAP_SYS_ADMIN or a writable open) and mounts them. */
  readonly control: DeviceControl = this;
  readonly mounts: BrokeredMounts = this;
  private seq = 0;

  private constructor(
    dir: string,
    private fd: number,
    private readonly timeoutMs: number,
    /** How the devices handed out are named (a container's /dev names; see device-names.ts). */
    private readonly names: DeviceNames,
  ) {
    this.dir = dir;
    this.controlPath = `${dir}/${BROKER_SOCKET}`;
  }

  /**
   * Connect to the broker of DIR and say hello. Throws BrokerUnavailableError. Every reply
   * is waited for at most $LOOPFS_BROKER_TIMEOUT seconds (SO_RCVTIMEO): a broker that
   * accepts and never answers (stopped, hung) is an error, not a hang.
   */
  static connect(dir: string, client = 'losetup', env: NodeJS.ProcessEnv = process.env, names = DeviceNames.NONE): BrokeredInstance {
    dir = resolvePath(dir); // names we print must work again as operands
    const n = native();
    const timeoutMs = brokerTimeoutMs(env);
    let fd: number;
    try {
      // bounded too: a broker that stopped accepting (out of fds, stopped, hung) leaves its
      // backlog full, and connect(2) would wait for ever
      fd = n.seqpacketConnect(`${dir}/${BROKER_SOCKET}`, timeoutMs);
    } catch (e) {
      if (hasCode(e, 'ECONNREFUSED')) throw new BrokerUnavailableError(dir, 'the loopfs broker of this instance is not running');
      if (hasCode(e, 'EAGAIN')) {
        const s = timeoutMs / 1000;
        throw new BrokerUnavailableError(dir, `the loopfs broker did not accept the connection within ${s} second${s === 1 ? '' : 's'} (LOOPFS_BROKER_TIMEOUT)`);
      }
      throw new BrokerUnavailableError(dir, `cannot reach the loopfs broker: ${toSysError(e).description}`);
    }
    const scope = new BrokeredInstance(dir, fd, timeoutMs, names);
    try {
      n.setRecvTimeout(fd, timeoutMs);
      scope.call('hello', { client });
    } catch (e) {
      scope.close();
      if (e instanceof BrokerError || e instanceof ProtocolError) throw new BrokerUnavailableError(dir, e.message.replace(`${dir}: `, ''));
      throw e;
    }
    return scope;
  }

  close(): void {
    if (this.fd >= 0) {
      native().close(this.fd);
      this.fd = -1;
    }
  }

  /**
   * One request and its reply. Received fds are returned (the caller owns them); an
   * error reply is thrown as the matching error (see toError).
   */
  private call(op: Op, fields: object = {}, fds: number[] = []): { reply: Record<string, unknown>; fds: number[] } {
    const n = native();
    if (this.fd < 0) throw new BrokerError('EBADF', `${this.dir}: the broker connection is closed`);
    const id = ++this.seq;
    let sendError: SysError | null = null;
    try {
      n.sendMsg(this.fd, encodeMessage({ v: PROTOCOL_VERSION, id, op, ...fields }), fds);
    } catch (e) {
      // A broker that refuses a connection says why and closes it at once: the reason
      // is waiting in our queue even though sending failed. Read it before giving up.
      sendError = toSysError(e);
    }
    for (;;) {
      let msg;
      try {
        msg = n.recvMsg(this.fd, MAX_MESSAGE_BYTES, MAX_MESSAGE_FDS);
      } catch (e) {
        throw new BrokerError(toSysError(e).code, `${this.dir}: the loopfs broker went away (${toSysError(e).description})`);
      }
      if (msg === null) {
        // EAGAIN on our blocking socket: SO_RCVTIMEO expired. A late reply must not answer
        // our next request: this connection is done.
        this.close();
        const s = this.timeoutMs / 1000;
        throw new BrokerError('ETIMEDOUT', `${this.dir}: the loopfs broker did not answer within ${s} second${s === 1 ? '' : 's'} (LOOPFS_BROKER_TIMEOUT)`);
      }
      if (msg.eof) {
        if (sendError) throw new BrokerError(sendError.code, `${this.dir}: the loopfs broker went away (${sendError.description})`);
        throw new BrokerError('ECONNRESET', `${this.dir}: the loopfs broker closed the connection`);
      }
      if (msg.truncated || msg.ctrlTruncated) throw new BrokerError('EBADMSG', `${this.dir}: malformed reply from the loopfs broker`);
      let reply;
      try {
        reply = decodeReply(msg.data);
      } catch (e) {
        closeAll(msg.fds);
        throw e;
      }
      // a reply to an earlier request we gave up on cannot happen (one at a time); an
      // unsolicited error (id null: refused at accept) answers whatever we asked
      if (sendError && (reply.ok || reply.id !== null)) {
        closeAll(msg.fds);
        continue; // not the refusal we look for: drain to eof
      }
      if (reply.id !== id && reply.id !== null) {
        closeAll(msg.fds);
        continue;
      }
      if (!reply.ok) {
        closeAll(msg.fds);
        throw toError(reply.error);
      }
      return { reply: reply as Record<string, unknown>, fds: msg.fds };
    }
  }

  // ---------------------------------------------------------------- LoopScope

  nodePath(minor: number): string {
    return `${this.dir}/loop${minor}`;
  }

  /** A device's name as handed out: its container name where it has one, else DIR/loopN. */
  private deviceName(minor: number): string {
    return this.names.pathOf(minor) ?? this.nodePath(minor);
  }

  /** Every device the instance holds, as the broker describes it. */
  devices(): BrokerDevice[] {
    const all: DeviceEntry[] = [];
    for (let start = 0, pages = 0; ; pages++) {
      const { reply } = this.call('list', start ? { start } : {});
      const list = reply.devices;
      if (!Array.isArray(list)) throw new BrokerError('EBADMSG', `${this.dir}: malformed device list from the loopfs broker`);
      all.push(...(list as DeviceEntry[]).filter((d) => Number.isInteger(d?.minor)));
      const next = reply.next;
      if (typeof next !== 'number' || next <= start || pages > 4096) break;
      start = next;
    }
    const seen = new Set<number>();
    return all.filter((d) => !seen.has(d.minor) && seen.add(d.minor)).map((d) => new BrokerDevice(this.deviceName(d.minor), d));
  }

  /**
   * In use, in the order util-linux lists them: readdir() order of the /sys/block this
   * process sees (in a container, the hook's overlay, whose order is the container's names),
   * so that `losetup -a` of ours, util-linux's and busybox's agree line for line. The broker's
   * reply is in the host's order, which a container does not see.
   */
  usedDevices(): LoopDevice[] {
    const rank = new Map<number, number>();
    for (const name of loopNamesInSysfs()) {
      const minor = this.names.sysBlockMinor(name);
      if (minor !== null && !rank.has(minor)) rank.set(minor, rank.size);
    }
    const at = (d: BrokerDevice): number => rank.get(d.devno()[1]) ?? Number.MAX_SAFE_INTEGER;
    return this.devices()
      .filter((d) => d.isBound())
      .sort((a, b) => at(a) - at(b) || a.devno()[1] - b.devno()[1]);
  }

  devicePath(arg: string): string {
    return devicePathIn(this.dir, arg, this.names);
  }

  checkDevice(arg: string): void {
    checkMember(this, arg);
  }

  contains(dev: LoopDevice): boolean {
    const minor = minorOf(dev);
    return minor !== null && this.devices().some((d) => d.devno()[1] === minor);
  }

  findFree(): LoopDevice {
    const { reply } = this.call('get-free');
    return new LoopDevice(this.deviceName(reply.minor as number));
  }

  /**
   * Open the file here (read-write, else read-only where only reading is allowed, like
   * util-linux) and let the broker bind a device of the instance to that open file.
   */
  allocate(req: AttachRequest, opts: { session?: boolean } = {}): Allocated {
    const n = native();
    const c = n.constants;
    let readOnly = (req.flags & c.LO_FLAGS_READ_ONLY) !== 0;
    let fd: number;
    try {
      fd = n.open(req.file, readOnly ? c.O_RDONLY : c.O_RDWR);
    } catch (e) {
      if (readOnly || !hasCode(e, 'EROFS', 'EACCES')) throw new AttachError(toSysError(e), false, true);
      try {
        fd = n.open(req.file, c.O_RDONLY);
      } catch (e2) {
        throw new AttachError(toSysError(e2), false, true);
      }
      readOnly = true;
    }
    try {
      const fields: Record<string, unknown> = {
        name: req.file,
        readOnly,
        partscan: (req.flags & c.LO_FLAGS_PARTSCAN) !== 0,
        directIo: (req.flags & c.LO_FLAGS_DIRECT_IO) !== 0,
        autoclear: (req.flags & c.LO_FLAGS_AUTOCLEAR) !== 0,
      };
      if (req.offset) fields.offset = req.offset.toString();
      if (req.sizelimit) fields.sizelimit = req.sizelimit.toString();
      if (req.blockSize) fields.blockSize = req.blockSize;
      if (opts.session) fields.session = true;
      if (Buffer.byteLength(req.file) > 4096) delete fields.name;
      const { reply } = this.call('attach', fields, [fd]);
      return { device: new LoopDevice(this.deviceName(reply.minor as number)), readOnly: reply.readOnly === true };
    } catch (e) {
      // the broker could not bind a device to the file: util-linux blames the file
      if (isSysError(e) && !(e instanceof AttachError)) throw new AttachError(e, false);
      throw e;
    } finally {
      n.close(fd);
    }
  }

  ensureDevice(): void {
    /* the broker allocates devices; explicit ones must already be the instance's */
  }

  detach(dev: LoopDevice): void {
    this.call('detach', { minor: this.requireMinor(dev) });
  }

  detachMany(devs: LoopDevice[]): unknown[] {
    return detachEach(this, devs);
  }

  settle(): void {
    /* the broker settles its devices itself */
  }

  /** LOOP_SET_CAPACITY by the broker (the caller's node may be read-only or unreachable). */
  setCapacity(dev: LoopDevice): void {
    this.call('set-capacity', { minor: this.requireMinor(dev) });
  }

  /** LOOP_SET_DIRECT_IO by the broker (the kernel wants CAP_SYS_ADMIN or a writable open). */
  setDirectIo(dev: LoopDevice, on: boolean): void {
    this.call('set-direct-io', { minor: this.requireMinor(dev), on });
  }

  /** LOOP_SET_BLOCK_SIZE by the broker. */
  setBlockSize(dev: LoopDevice, size: number): void {
    this.call('set-block-size', { minor: this.requireMinor(dev), size });
  }

  /** A detached nosuid,nodev mount of a bound device of the instance. */
  mount(dev: LoopDevice, opts: MountOptions = {}): BrokerMount {
    const fields: Record<string, unknown> = { minor: this.requireMinor(dev) };
    if (opts.fstype) fields.fstype = opts.fstype;
    if (opts.readOnly) fields.readOnly = true;
    if (opts.attrs?.length) fields.attrs = opts.attrs;
    if (opts.fuse !== undefined) fields.fuse = opts.fuse;
    const { reply, fds } = this.call('mount', fields);
    if (fds.length !== 1) {
      closeAll(fds);
      throw new BrokerError('EBADMSG', `${this.dir}: the loopfs broker sent no mount`);
    }
    const fuse = typeof reply.fuse === 'string' ? reply.fuse : null;
    return { fd: fds[0], fstype: String(reply.fstype), readOnly: reply.readOnly === true, idmapped: reply.idmapped === true, fuse };
  }

  private requireMinor(dev: LoopDevice): number {
    const minor = minorOf(dev);
    if (minor === null) throw sysError('ENODEV', 'stat', dev.path);
    return minor;
  }
}

function minorOf(dev: LoopDevice): number | null {
  const d = dev.devno();
  return d && d[0] === LOOP_MAJOR ? d[1] : null;
}

function closeAll(fds: number[]): void {
  for (const fd of fds) native().close(fd);
}

/** An error reply as the error the front ends already know how to word. */
function toError(e: ErrorBody): Error {
  const se = (): SysError => {
    const err = sysError(e.code, 'broker');
    // codes the C library does not know keep the broker's words
    if (err.errno === 0) err.description = e.message;
    return err;
  };
  switch (e.kind) {
    case 'quota':
      return new QuotaError(e.message);
    case 'nofree':
      return new NoFreeDeviceError(se());
    case 'file':
      return new AttachError(se(), false, true);
    case 'device':
      return se();
    case 'mount':
      return new BrokerError(e.code, e.message, e.kind);
    default:
      return new BrokerError(e.code, e.message, e.kind);
  }
}
