/**
 * Random names without node:crypto: importing node:crypto compiles a dozen internal
 * modules (~5 ms, 5% of `losetup -a`'s whole run) for the few bytes an instance id or
 * a temporary name needs. /dev/urandom gives the same kernel CSPRNG bytes.
 */
import { closeSync, openSync, readSync } from 'node:fs';

export function randomHex(bytes: number): string {
  const buf = Buffer.alloc(bytes);
  const fd = openSync('/dev/urandom', 'r');
  try {
    for (let off = 0; off < bytes; ) off += readSync(fd, buf, off, bytes - off, null);
  } finally {
    closeSync(fd);
  }
  return buf.toString('hex');
}

/** A private temporary name beside `name`: unique per process and call, hidden, `.tmp`. */
export function tempNameFor(name: string): string {
  return `.${name}.${process.pid}.${randomHex(4)}.tmp`;
}
