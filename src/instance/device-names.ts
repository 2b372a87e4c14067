/**
 * The names a container gives its instance's devices. The OCI hook (src/oci/container-dev.ts)
 * links /dev/loopK -> loopfs/loopN (K = 0, 1, ... in ascending order of the minors N) and
 * overlays /sys/block with the same names, so that busybox, which probes /dev/loop0, loop1,
 * ..., and util-linux, which names a device in use by its /sys/block entry, both find the
 * devices. Our own tools find the instance at /dev/loopfs by themselves; this map makes them
 * print each device under the same name as those tools (/dev/loopK, not /dev/loopfs/loopN)
 * and accept that name as an operand, also without its /dev prefix, as util-linux does.
 *
 * The map is read from the links themselves (not from a record of the hook's), so a /dev
 * arranged by hand works the same; a device without a link keeps its instance name.
 */
import { readdirSync, readlinkSync } from 'node:fs';
import { basename, resolve as resolvePath } from 'node:path';
import { SYS_BLOCK } from '../kernel/sysfs.js';

const LOOP_NAME = /^loop(\d+)$/;

export class DeviceNames {
  static readonly NONE = new DeviceNames('/dev', new Map());

  private readonly byName = new Map<string, number>();

  private constructor(
    private readonly linkDir: string,
    private readonly byMinor: ReadonlyMap<number, string>,
  ) {
    for (const [minor, name] of byMinor) this.byName.set(name, minor);
  }

  /**
   * The loopK entries of `linkDir` that are symlinks to `dir`/loopN (relative to linkDir or
   * absolute). Where two names reach one device, the lowest K wins (busybox's first probe).
   */
  static read(dir: string, linkDir: string): DeviceNames {
    let entries: string[];
    try {
      entries = readdirSync(linkDir);
    } catch {
      // no link directory (ENOENT, ENOTDIR): no container names
      return DeviceNames.NONE;
    }
    const want = resolvePath(dir);
    const found: Array<[number, number, string]> = []; // [K, N, name]
    for (const name of entries) {
      const k = LOOP_NAME.exec(name);
      if (!k) continue;
      let target: string;
      try {
        target = readlinkSync(`${linkDir}/${name}`);
      } catch {
        continue; // not a symlink: a node of its own, named as it is
      }
      const abs = resolvePath(linkDir, target);
      const n = LOOP_NAME.exec(basename(abs));
      if (n && resolvePath(abs, '..') === want) found.push([Number(k[1]), Number(n[1]), name]);
    }
    const byMinor = new Map<number, string>();
    for (const [, minor, name] of found.sort((a, b) => a[0] - b[0])) if (!byMinor.has(minor)) byMinor.set(minor, name);
    return byMinor.size === 0 ? DeviceNames.NONE : new DeviceNames(linkDir, byMinor);
  }

  get size(): number {
    return this.byMinor.size;
  }

  /** The container's path of loop device `minor`, or null when it has no name here. */
  pathOf(minor: number): string | null {
    const name = this.byMinor.get(minor);
    return name === undefined ? null : `${this.linkDir}/${name}`;
  }

  /** A relative operand that is one of the names ("loop0"): its path; else null. */
  operand(arg: string): string | null {
    return this.byName.has(arg) ? `${this.linkDir}/${arg}` : null;
  }

  /**
   * The minor of the device a /sys/block entry (loopX) stands for. With names, /sys/block
   * may be the hook's overlay, whose loopK link to the real loopN: the link says which
   * (on a real sysfs it names the entry itself). Without names it is the kernel's own.
   */
  sysBlockMinor(name: string, sysBlock = SYS_BLOCK): number | null {
    let kernelName = name;
    if (this.size > 0) {
      try {
        kernelName = basename(readlinkSync(`${sysBlock}/${name}`));
      } catch {
        // not a link in this /sys/block (ENOENT, EINVAL): not a device of ours
        return null;
      }
    }
    const m = LOOP_NAME.exec(kernelName);
    return m ? Number(m[1]) : null;
  }
}
