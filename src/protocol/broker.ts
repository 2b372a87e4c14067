/**
 * The broker protocol, version 2: what `loopfs serve` and its clients (BrokeredInstance,
 * mount.loop) say to each other over `DIR/loop-control`, a SOCK_SEQPACKET unix socket.
 *
 * Framing is the socket's: one datagram is one message, whole or not at all, so there is
 * no length prefix to get wrong. A message is one JSON object, UTF-8, at most
 * MAX_MESSAGE_BYTES. File descriptors ride along as SCM_RIGHTS: the backing file with
 * `attach`, the detached mount with the reply to `mount`; no other message carries any.
 *
 *   request  {"v":1,"id":7,"op":"attach","session":true}            + 1 fd
 *   reply    {"v":1,"id":7,"ok":true,"minor":12,"readOnly":false}
 *   error    {"v":1,"id":7,"ok":false,"error":{"code":"EDQUOT","message":"…","kind":"quota"}}
 *
 * JSON rather than a binary layout: requests are a few dozen bytes and each one costs a
 * syscall-heavy operation on the server, so parsing is never the bottleneck; JSON keeps
 * the protocol greppable in strace output and trivially versioned. 64-bit quantities
 * (offsets, sizes, inode numbers) travel as decimal strings: JSON numbers lose precision
 * above 2^53.
 *
 * Validation is strict on the server (this module's decodeRequest): an unknown op, an
 * unknown or mistyped field, a wrong version, the wrong number of fds, invalid UTF-8 or an
 * oversized datagram each give an error reply and change nothing. Replies are checked
 * loosely on the client (unknown reply fields are ignored) so that a newer broker can add
 * fields without breaking older clients; a new request field or op needs a new version.
 *
 * Versions. A request names its version in "v" and is answered in the same version; the
 * broker speaks every version in SUPPORTED_VERSIONS, each with exactly its own fields (a
 * field of a later version in an older request is an unknown field, as it was then).
 * Messages not tied to a request (a refused connection, an unreadable datagram) go out as
 * version 1, which every client reads. Clients send PROTOCOL_VERSION and read replies of
 * any supported version.
 *   v1  hello list get-free attach detach set-capacity mount
 *   v2  mount: "fuse" (parse the filesystem in a userspace driver, fuse.ts); the mount
 *       reply says which driver ("fuse"); hello says whether the broker mounts with FUSE
 *       never, on request or always ("fuseMode") and with which drivers ("fuseDrivers").
 *       A v1 client of a `--fuse` broker gets FUSE mounts (it cannot ask otherwise).
 *       New ops set-direct-io {minor, on} and set-block-size {minor, size}: LOOP_SET_DIRECT_IO
 *       and LOOP_SET_BLOCK_SIZE on a live device (`losetup --direct-io=on DEV`, `-b N DEV`),
 *       which the kernel allows only with CAP_SYS_ADMIN or a writable open of the node.
 */

/**
 * The broker's socket in a served instance: named like the control node it stands in for,
 * so a tool that looks for DIR/loop-control finds the broker there.
 */
export const BROKER_SOCKET = 'loop-control';

export const PROTOCOL_VERSION = 2;
export const SUPPORTED_VERSIONS = [1, 2] as const;
export type ProtocolVersion = (typeof SUPPORTED_VERSIONS)[number];

/** The largest datagram either side accepts (64 KiB); anything longer is a protocol error. */
export const MAX_MESSAGE_BYTES = 64 * 1024;

/**
 * The most fds one message may carry. Receivers ask recvMsg for exactly this many: a
 * message with more arrives "control-truncated" and every fd in it is closed unread.
 */
export const MAX_MESSAGE_FDS = 1;

export const OPS = ['hello', 'list', 'get-free', 'attach', 'detach', 'set-capacity', 'mount', 'set-direct-io', 'set-block-size'] as const;
export type Op = (typeof OPS)[number];

/** The version that introduced each op after v1. */
const OP_SINCE: Partial<Record<Op, ProtocolVersion>> = { 'set-direct-io': 2, 'set-block-size': 2 };

/** The ops of a protocol version (hello lists them). */
export function opsOf(v: ProtocolVersion): Op[] {
  return OPS.filter((op) => (OP_SINCE[op] ?? 1) <= v);
}

/**
 * Mount attributes a client may ask for. nosuid and nodev are always set by the broker
 * (asking for them is allowed and changes nothing); suid, dev and every filesystem-specific
 * option are refused: a filesystem's own options (errors=panic, …) are parsed by the kernel
 * as root and are not the caller's to choose.
 */
export const MOUNT_ATTRS = ['noexec', 'noatime', 'nodiratime', 'relatime', 'strictatime', 'nosymfollow', 'nosuid', 'nodev'] as const;
export type MountAttrName = (typeof MOUNT_ATTRS)[number];

// ---------------------------------------------------------------- requests

export interface HelloRequest {
  op: 'hello';
  /** Free text naming the client ("losetup", "mount.loop"), for logs. */
  client?: string;
}
export interface ListRequest {
  op: 'list';
  /** Index into the device list to start from (the previous reply's `next`). */
  start?: number;
}
export interface GetFreeRequest {
  op: 'get-free';
  /** Detach and release the device when this connection closes. */
  session?: boolean;
}
export interface AttachRequestMsg {
  op: 'attach';
  /** Name recorded in lo_file_name (display only: the kernel names the file itself). */
  name?: string;
  offset?: string;
  sizelimit?: string;
  readOnly?: boolean;
  partscan?: boolean;
  directIo?: boolean;
  /**
   * LO_FLAGS_AUTOCLEAR. The broker keeps the device open for the life of the connection,
   * so it stays bound until the connection closes or something else (a mount) holds it.
   */
  autoclear?: boolean;
  blockSize?: number;
  session?: boolean;
}
export interface DetachRequest {
  op: 'detach';
  minor: number;
}
export interface SetCapacityRequest {
  op: 'set-capacity';
  minor: number;
}
export interface SetDirectIoRequest {
  op: 'set-direct-io';
  minor: number;
  on: boolean;
}
export interface SetBlockSizeRequest {
  op: 'set-block-size';
  minor: number;
  size: number;
}
export interface MountRequest {
  op: 'mount';
  minor: number;
  /** Filesystem type; probed from the device when absent. Must be on the allow-list. */
  fstype?: string;
  readOnly?: boolean;
  attrs?: MountAttrName[];
  /** v2: true = through a FUSE driver, false = by the kernel; absent = the broker's default. */
  fuse?: boolean;
}

export type RequestBody =
  | HelloRequest
  | ListRequest
  | GetFreeRequest
  | AttachRequestMsg
  | DetachRequest
  | SetCapacityRequest
  | SetDirectIoRequest
  | SetBlockSizeRequest
  | MountRequest;

export type Request = RequestBody & { v: ProtocolVersion; id: number };

// ---------------------------------------------------------------- replies

export interface HelloReply {
  server: 'loopfs';
  protocol: number;
  /** The instance's id (its state's random id). */
  instance: string;
  /** The caller as the broker sees it (SO_PEERCRED, in the broker's namespaces). */
  uid: number;
  gid: number;
  ops: Op[];
  fs: string[];
  /** v2: whether mounts go through FUSE never, when asked, or always (`serve --fuse`). */
  fuseMode?: FuseMode;
  /** v2: the FUSE drivers the broker can run. */
  fuseDrivers?: string[];
}

export type FuseMode = 'never' | 'allow' | 'always';

/** One held device of the instance with the attributes `losetup -l` shows (util-linux's fields). */
export interface DeviceEntry {
  minor: number;
  bound: boolean;
  /** Fields below are null when the device is not bound. */
  backingFile: string | null;
  offset: string | null;
  sizelimit: string | null;
  autoclear: boolean;
  readOnly: boolean;
  directIo: boolean;
  partscan: boolean;
  logSec: string | null;
  /** st_dev / st_ino of the backing file, decimal (LOOP_GET_STATUS64). */
  backingDev: string | null;
  backingIno: string | null;
}

export interface ListReply {
  devices: DeviceEntry[];
  /**
   * Present when the list did not fit in one message (LIST_PAGE_BYTES): ask again with
   * `start: next` for the rest. The list is not a snapshot across pages.
   */
  next?: number;
}

/** Bytes of device entries one list reply carries at most (a page; the rest follows). */
export const LIST_PAGE_BYTES = 48 * 1024;
export interface GetFreeReply {
  minor: number;
}
export interface AttachReply {
  minor: number;
  readOnly: boolean;
}
export interface MountReply {
  fstype: string;
  readOnly: boolean;
  /** Whether the mount is ID-mapped to the caller's user namespace. */
  idmapped: boolean;
  /** v2: the FUSE driver serving the mount; absent for a kernel mount. */
  fuse?: string;
}

/**
 * What kind of failure an error reply reports, for clients that word messages differently
 * (util-linux blames the file or the device). `code` is an errno name.
 */
export type ErrorKind = 'protocol' | 'denied' | 'quota' | 'nofree' | 'file' | 'device' | 'mount' | 'internal';

export interface ErrorBody {
  code: string;
  message: string;
  kind?: ErrorKind;
}

export type Reply =
  | ({ v: number; id: number | null; ok: true } & Record<string, unknown>)
  | { v: number; id: number | null; ok: false; error: ErrorBody };

// ---------------------------------------------------------------- validation

/** A request that cannot be served as sent. Carries the id when it could be read. */
export class ProtocolError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly id: number | null = null,
  ) {
    super(message);
    this.name = 'ProtocolError';
  }
}

type FieldType = 'bool' | 'minor' | 'index' | 'u64' | 'blocksize' | 'short-string' | 'name' | 'attrs' | 'fstype';

/** Every field each op accepts (besides v, id, op) and its type; all are optional unless in REQUIRED. */
const FIELDS: Record<Op, Record<string, FieldType>> = {
  hello: { client: 'short-string' },
  list: { start: 'index' },
  'get-free': { session: 'bool' },
  attach: {
    name: 'name',
    offset: 'u64',
    sizelimit: 'u64',
    readOnly: 'bool',
    partscan: 'bool',
    directIo: 'bool',
    autoclear: 'bool',
    blockSize: 'blocksize',
    session: 'bool',
  },
  detach: { minor: 'minor' },
  'set-capacity': { minor: 'minor' },
  mount: { minor: 'minor', fstype: 'fstype', readOnly: 'bool', attrs: 'attrs' },
  'set-direct-io': { minor: 'minor', on: 'bool' },
  'set-block-size': { minor: 'minor', size: 'blocksize' },
};

/** Fields each version added to FIELDS (absent from every earlier version). */
const ADDED_IN: Record<number, Partial<Record<Op, Record<string, FieldType>>>> = {
  2: { mount: { fuse: 'bool' } },
};

/** The fields an op accepts in a version. */
function fieldsOf(op: Op, v: ProtocolVersion): Record<string, FieldType> {
  let fields = FIELDS[op];
  for (const [since, added] of Object.entries(ADDED_IN)) if (v >= Number(since) && added[op]) fields = { ...fields, ...added[op] };
  return fields;
}

const REQUIRED: Partial<Record<Op, string[]>> = {
  detach: ['minor'],
  'set-capacity': ['minor'],
  mount: ['minor'],
  'set-direct-io': ['minor', 'on'],
  'set-block-size': ['minor', 'size'],
};

/** How many fds each op must carry. */
export const FDS_FOR: Record<Op, number> = {
  hello: 0,
  list: 0,
  'get-free': 0,
  attach: 1,
  detach: 0,
  'set-capacity': 0,
  mount: 0,
  'set-direct-io': 0,
  'set-block-size': 0,
};

const U64_MAX = (1n << 64n) - 1n;
/** The kernel's largest loop minor (MINORMASK, 20 bits). */
const MAX_MINOR = (1 << 20) - 1;

function checkField(name: string, type: FieldType, value: unknown): string | null {
  switch (type) {
    case 'bool':
      return typeof value === 'boolean' ? null : `${name} must be a boolean`;
    case 'minor':
      return Number.isInteger(value) && (value as number) >= 0 && (value as number) <= MAX_MINOR
        ? null
        : `${name} must be a loop device minor (0..${MAX_MINOR})`;
    case 'index':
      return Number.isInteger(value) && (value as number) >= 0 && (value as number) <= 0xffffffff ? null : `${name} must be an integer in 0..2^32-1`;
    case 'u64':
      return typeof value === 'string' && /^(0|[1-9]\d{0,19})$/.test(value) && BigInt(value) <= U64_MAX
        ? null
        : `${name} must be a decimal string in 0..2^64-1`;
    case 'blocksize':
      // 0 = the kernel default; otherwise what LOOP_CONFIGURE accepts: 512..page size, a power of 2
      return Number.isInteger(value) && ((value as number) === 0 || ((value as number) >= 512 && (value as number) <= 65536 && ((value as number) & ((value as number) - 1)) === 0))
        ? null
        : `${name} must be 0 or a power of two in 512..65536`;
    case 'short-string':
      return typeof value === 'string' && value.length <= 64 ? null : `${name} must be a string of at most 64 characters`;
    case 'name':
      // lo_file_name keeps 63 bytes; a path is at most PATH_MAX
      return typeof value === 'string' && Buffer.byteLength(value) <= 4096 && !value.includes('\0')
        ? null
        : `${name} must be a path of at most 4096 bytes without NUL`;
    case 'fstype':
      return typeof value === 'string' && /^[a-z0-9][a-z0-9_.-]{0,31}$/.test(value) ? null : `${name} must be a filesystem type name`;
    case 'attrs':
      return Array.isArray(value) &&
        value.length <= MOUNT_ATTRS.length &&
        value.every((a) => typeof a === 'string' && (MOUNT_ATTRS as readonly string[]).includes(a))
        ? null
        : `${name} must be a list of mount attributes (${MOUNT_ATTRS.join(', ')})`;
  }
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** A plain JSON object (not an array, not null). */
function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isId(v: unknown): v is number {
  return Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 0xffffffff;
}

/**
 * Parse and validate one request datagram that arrived with `nfds` file descriptors.
 * Throws ProtocolError (with the id when it could be read) for anything not exactly right.
 */
export function decodeRequest(data: Uint8Array, nfds: number): Request {
  if (data.length > MAX_MESSAGE_BYTES) throw new ProtocolError('EMSGSIZE', `message longer than ${MAX_MESSAGE_BYTES} bytes`);
  let text: string;
  try {
    text = utf8.decode(data);
  } catch {
    throw new ProtocolError('EBADMSG', 'message is not valid UTF-8');
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw new ProtocolError('EBADMSG', 'message is not valid JSON');
  }
  if (!isObject(raw)) throw new ProtocolError('EBADMSG', 'message must be a JSON object');
  const id = isId(raw.id) ? raw.id : null;
  if (id === null) throw new ProtocolError('EBADMSG', 'id must be an integer in 0..2^32-1');
  if (!isVersion(raw.v)) {
    throw new ProtocolError('EPROTONOSUPPORT', `protocol version ${JSON.stringify(raw.v)?.slice(0, 20)} is not supported (this broker speaks ${SUPPORTED_VERSIONS.join(', ')})`, id);
  }
  const op = raw.op;
  if (typeof op !== 'string' || !(opsOf(raw.v) as string[]).includes(op)) {
    throw new ProtocolError('EOPNOTSUPP', `unknown op ${JSON.stringify(op)?.slice(0, 40)}`, id);
  }
  const fields = fieldsOf(op as Op, raw.v);
  for (const [key, value] of Object.entries(raw)) {
    if (key === 'v' || key === 'id' || key === 'op') continue;
    const type = Object.hasOwn(fields, key) ? fields[key] : undefined;
    if (!type) throw new ProtocolError('EINVAL', `${op}: unknown field ${JSON.stringify(key.slice(0, 40))}`, id);
    const bad = checkField(key, type, value);
    if (bad) throw new ProtocolError('EINVAL', `${op}: ${bad}`, id);
  }
  for (const key of REQUIRED[op as Op] ?? []) {
    if (!Object.hasOwn(raw, key)) throw new ProtocolError('EINVAL', `${op}: ${key} is required`, id);
  }
  if (nfds !== FDS_FOR[op as Op]) {
    throw new ProtocolError('EBADF', `${op} carries ${FDS_FOR[op as Op]} file descriptor(s), not ${nfds}`, id);
  }
  return raw as unknown as Request;
}

/** Serialise a message; throws when it would exceed MAX_MESSAGE_BYTES (a bug on our side). */
export function encodeMessage(msg: object): Buffer {
  const buf = Buffer.from(JSON.stringify(msg), 'utf8');
  if (buf.length > MAX_MESSAGE_BYTES) throw new RangeError(`message of ${buf.length} bytes exceeds ${MAX_MESSAGE_BYTES}`);
  return buf;
}

function isVersion(v: unknown): v is ProtocolVersion {
  return (SUPPORTED_VERSIONS as readonly unknown[]).includes(v);
}

/** A success reply, in the version of the request it answers. */
export function okReply(id: number, body: object = {}, v: ProtocolVersion = PROTOCOL_VERSION): object {
  return { v, id, ok: true, ...body };
}

/** An error reply; version 1 (readable by every client) unless it answers a request of another. */
export function errorReply(id: number | null, error: ErrorBody, v: ProtocolVersion = 1): object {
  return { v, id, ok: false, error };
}

/** Client side: parse a reply datagram; throws ProtocolError when it is not one. */
export function decodeReply(data: Uint8Array): Reply {
  let raw: unknown;
  try {
    raw = JSON.parse(utf8.decode(data));
  } catch {
    throw new ProtocolError('EBADMSG', 'reply is not valid JSON');
  }
  if (!isObject(raw) || typeof raw.ok !== 'boolean' || !(raw.id === null || isId(raw.id))) {
    throw new ProtocolError('EBADMSG', 'reply is malformed');
  }
  if (!isVersion(raw.v)) throw new ProtocolError('EPROTONOSUPPORT', `broker speaks protocol version ${JSON.stringify(raw.v)?.slice(0, 20)}`);
  if (raw.ok === false) {
    const e = raw.error;
    if (!isObject(e) || typeof e.code !== 'string' || typeof e.message !== 'string') throw new ProtocolError('EBADMSG', 'error reply is malformed');
  }
  return raw as Reply;
}
