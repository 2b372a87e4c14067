// The in-container scripts every engine test runs, and the host-side checks that go with them.
// Each script prints `KEY VALUE` lines (answers() in support.ts reads them): the exit status
// and the exact message of each tool, so a test compares what util-linux or busybox printed.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { expect } from 'vitest';
import { readLoopState } from '../helpers/devices.js';
import { runProgram } from '../helpers/run.js';
import { REF_LOSETUP } from '../helpers/env.js';
import { HELLO, type BrokerSandbox } from '../broker/support.js';
import { answers, describeRun, deviceNode, instanceOf, NOTHING, text, waitNothingLeft, type Engine } from './support.js';

/** one MSG: a tool's whole message on one line, its newlines as '~' (util-linux prints two lines). */
export const ONE = "one() { printf %s \"$1\" | tr '\\n' '~'; }\n";

/** util-linux 2.38's two-line message for a mount(2) that failed with EPERM. */
export const UL_EPERM = 'mount: /mnt: permission denied.~       dmesg(1) may have more information after failed mount system call.';
/** busybox's, for any EPERM of mount(2). */
export const BB_EPERM = 'mount: permission denied (are you root?)';

/**
 * The container's loop entries: `dev` its /dev/loopN names, `node-loopN` each node's
 * major:minor (hex), `sysblock` the loop entries of its /sys/block (no host device may show).
 */
export const LIST_NODES = `echo "dev $(ls /dev | grep -E '^loop([0-9]+|-control)$' | sort | tr '\\n' ' ' | sed 's/ $//')"
for d in $(ls /dev | grep -E '^loop[0-9]+$'); do echo "node-$d $(stat -L -c %t:%T /dev/$d)"; done
echo "sysblock $(ls /sys/block | grep -E '^loop' | sort | tr '\\n' ' ' | sed 's/ $//')"
echo "caps sys_admin=$(( ($(grep CapEff /proc/self/status | cut -f2 | sed 's/^/0x/') >> 21) & 1 ))"
`;

/**
 * util-linux `losetup -f --show` + `-a` + `-d` (by full path: busybox sh runs its own applets
 * before PATH), then busybox `losetup -f` + `-a`; the
 * busybox device stays bound to /img for the host to check (ATTACH_DONE frees it).
 */
export const ATTACH = `echo "id $(id -u)"
${LIST_NODES}echo "attach $(/usr/sbin/losetup -f --show /img 2>&1)"
/usr/sbin/losetup -a | sed 's/^/list /'
/usr/sbin/losetup -d /dev/loop0; echo "detach $?"
busybox losetup -f /img; echo "bb-attach $?"
busybox losetup -a | sed 's/^/bb-list /'
`;
export const ATTACH_DONE = 'busybox losetup -d /dev/loop0; echo "bb-detach $?"\n';

/** Unmodified util-linux `mount -o loop`, read back, umount (as a root without CAP_SYS_ADMIN: through the agent too). */
export const MOUNTS = `${ONE}out=$(/usr/bin/mount -o loop /img /mnt 2>&1); echo "mount $? $(one "$out")"
echo "read $(cat /mnt/hello.txt)"
echo "info $(grep ' /mnt ' /proc/self/mountinfo | cut -d' ' -f3,6)"
out=$(/usr/bin/umount /mnt 2>&1); echo "umount $? $(one "$out")"
echo "after $(grep -c ' /mnt ' /proc/self/mountinfo)"
echo end
`;

/**
 * Unmodified busybox `mount -o loop` (no -t: busybox tries each type in /proc/filesystems,
 * ext3 and ext2 before ext4, and gives up at the first EPERM), read back.
 */
export const BB_MOUNTS = `${ONE}mkdir -p /tmp/bb
out=$(busybox mount -o loop /img /tmp/bb 2>&1); echo "bb-mount $? $(one "$out")"
echo "bb-read $(cat /tmp/bb/hello.txt)"
echo "bb-info $(grep ' /tmp/bb ' /proc/self/mountinfo | cut -d' ' -f3,6)"
out=$(busybox umount /tmp/bb 2>&1); echo "bb-umount $? $(one "$out")"
echo end
`;

/**
 * What must be refused, as the container's root: /hostdev (a host device's node, bound in),
 * /otherdev (another container's device), /btrfs.img (a filesystem the kernel has but the
 * agent does not allow), and remounts of an agent-made mount dropping nosuid or nodev.
 */
export const REFUSALS = `${ONE}echo "dev $(ls /dev | grep -E '^loop[0-9]+$' | sort | tr '\\n' ' ' | sed 's/ $//')"
echo "loopfs $(ls /dev/loopfs | grep -E '^loop[0-9]+$' | sort | tr '\\n' ' ' | sed 's/ $//')"
out=$(/usr/bin/mount -t ext4 /hostdev /mnt 2>&1); echo "host $? $(one "$out")"
out=$(/usr/bin/mount -t ext4 /otherdev /mnt 2>&1); echo "other $? $(one "$out")"
out=$(/usr/bin/mount -o loop /btrfs.img /mnt 2>&1); echo "btrfs $? $(one "$out")"
out=$(busybox mount -o loop /btrfs.img /mnt 2>&1); echo "bb-btrfs $? $(one "$out")"
echo "freed $(/usr/sbin/losetup -a)"
out=$(/usr/bin/mount -o loop /img /mnt 2>&1); echo "good $? $(one "$out")"
out=$(/usr/bin/mount -o remount,suid /mnt 2>&1); echo "remount-suid $? $(one "$out")"
out=$(/usr/bin/mount -o remount,dev /mnt 2>&1); echo "remount-dev $? $(one "$out")"
out=$(busybox mount -o remount,suid /mnt 2>&1); echo "bb-remount-suid $? $(one "$out")"
echo "info $(grep ' /mnt ' /proc/self/mountinfo | cut -d' ' -f3,6)"
echo end
`;

/** lo_inode of loopN as the host sees it (the path in sysfs is the container's: /img). */
export function backingInode(minor: number): number {
  return Number(execFileSync(REF_LOSETUP, ['-n', '-O', 'BACK-INO', `/dev/loop${minor}`], { encoding: 'utf8' }).trim());
}

/** A btrfs image (mkfs.btrfs' minimum size, sparse), once per sandbox. */
export function btrfsImage(sb: BrokerSandbox): string {
  const p = sb.path('files', 'btrfs.img');
  if (!fs.existsSync(p)) {
    sb.file('btrfs.img', 128 << 20);
    execFileSync('mkfs.btrfs', ['-q', p], { stdio: 'pipe' });
    fs.chmodSync(p, 0o666);
  }
  return p;
}

/** new.txt of an ext4 image, read on the host in a private mount namespace (read-only). */
export async function writtenOnHost(sb: BrokerSandbox, image: string): Promise<string> {
  const mnt = sb.path('check-mnt');
  fs.mkdirSync(mnt, { recursive: true });
  const r = await runProgram('unshare', ['-m', '--propagation', 'private', 'sh', '-c', 'mount -o loop,ro "$IMG" "$MNT" && cat "$MNT/new.txt"'], {
    env: { ...sb.env, IMG: image, MNT: mnt },
  });
  return text(r.stdout) + text(r.stderr);
}

/**
 * Unmodified util-linux `mount -o loop` as the container's (unprivileged) root: read back,
 * write, a remount dropping nosuid refused, the host device and btrfs refused, umount.
 */
export const USERNS_MOUNT = `${ONE}echo "id $(id -u)"
echo "sys_admin $(( ($(grep CapEff /proc/self/status | cut -f2 | sed 's/^/0x/') >> 21) & 1 ))"
out=$(/usr/bin/mount -o loop /img /mnt 2>&1); echo "mount $? $(one "$out")"
echo "read $(cat /mnt/hello.txt)"
echo "info $(grep ' /mnt ' /proc/self/mountinfo | cut -d' ' -f3,6)"
echo "$WRITE" > /mnt/new.txt; echo "write $?"
out=$(/usr/bin/mount -o remount,suid /mnt 2>&1); echo "remount-suid $? $(one "$out")"
out=$(/usr/bin/mount -o remount,dev /mnt 2>&1); echo "remount-dev $? $(one "$out")"
echo "loopfs $(ls /dev/loopfs | grep -E '^loop[0-9]+$' | sort | tr '\\n' ' ' | sed 's/ $//')"
out=$(/usr/bin/mount -t ext4 /hostdev /tmp 2>&1); echo "host $? $(one "$out")"
out=$(/usr/bin/mount -t ext4 /otherdev /tmp 2>&1); echo "other $? $(one "$out")"
out=$(/usr/bin/mount -o loop /btrfs.img /tmp 2>&1); echo "btrfs $? $(one "$out")"
out=$(/usr/bin/umount /mnt 2>&1); echo "umount $? $(one "$out")"
echo "after $(grep -c ' /mnt ' /proc/self/mountinfo)"
echo end
`;

export interface Case {
  sb: BrokerSandbox;
  engine: Engine;
  hostFile: string;
  hostDev: string;
}

/**
 * USERNS_MOUNT as the root of a container started with FLAGS (another container of the same
 * flags runs meanwhile: its device is bound in as /otherdev), then the host's view: the host
 * device untouched, nothing left after removal, the write in the image.
 */
export async function userNsMount(c: Case, flags: string[], image: string, requester: number, owner: { uid: number; gid: number }, word: string): Promise<void> {
  const { sb, engine, hostFile, hostDev } = c;
  const hostNode = deviceNode(sb, 'host', Number(path.basename(hostDev).slice(4)));
  const other = await engine.start(flags, []);
  let id = '';
  try {
    const otherInst = instanceOf(sb, other, requester);
    expect(otherInst.minors.length).toBeGreaterThan(0);
    const otherNode = deviceNode(sb, 'other', otherInst.minors[0]);
    id = await engine.start(flags, [`${image}:/img`, `${hostNode}:/hostdev`, `${otherNode}:/otherdev`, `${btrfsImage(sb)}:/btrfs.img`]);
    const inst = instanceOf(sb, id, requester);
    expect(inst.owner).toEqual(owner);
    const r = await engine.exec(id, `WRITE='${word}'\n${USERNS_MOUNT}`);
    const a = answers(r);
    const log = describeRun(r);
    expect(a('end'), log).toBe('');
    expect(a('id'), log).toBe('0');
    expect(a('sys_admin'), 'no CAP_SYS_ADMIN').toBe('0');
    expect(a('mount'), log).toBe('0 ');
    expect(a('read'), log).toBe(HELLO.trim());
    expect(a('info'), log).toMatch(new RegExp(`^7:(${inst.minors.join('|')}) rw,nosuid,nodev,relatime,idmapped$`));
    expect(a('write'), log).toBe('0');
    expect(a('remount-suid'), log).toBe(`32 ${UL_EPERM}`);
    expect(a('remount-dev'), log).toBe(`32 ${UL_EPERM}`);
    // the broker refills the pool as the mount binds a device (live sync), so the set may
    // have grown: what matters is that every device listed is this instance's, never the
    // other container's nor the host's, and that the mounted one is there
    const listed = a('loopfs').split(' ').filter((n) => n !== '').map((n) => Number(n.slice(4)));
    const mounted = Number(/^7:(\d+) /.exec(a('info'))![1]);
    const foreign = new Set([...otherInst.minors, ...instanceOf(sb, other, requester).minors, Number(path.basename(hostDev).slice(4))]);
    expect(listed.filter((m) => foreign.has(m)), "the container's /dev/loopfs holds its own devices only").toEqual([]);
    expect(listed, log).toContain(mounted);
    expect(a('host'), log).toBe(`32 ${UL_EPERM.replace('/mnt', '/tmp')}`);
    expect(a('other'), log).toBe(`32 ${UL_EPERM.replace('/mnt', '/tmp')}`);
    expect(a('btrfs'), log).toBe(`32 ${UL_EPERM.replace('/mnt', '/tmp')}`);
    expect(a('umount'), log).toBe('0 ');
    expect(a('after'), log).toBe('0');
    // autoclear: the umount freed the device (it stays the instance's)
    for (const m of inst.minors) expect(readLoopState(`loop${m}`), `loop${m} freed by umount`).toBeUndefined();
    expect(readLoopState(path.basename(hostDev))?.backingFile).toBe(hostFile);
    for (const m of otherInst.minors) expect(readLoopState(`loop${m}`)).toBeUndefined();
  } finally {
    if (id) await engine.remove(id);
    await engine.remove(other);
  }
  expect(await waitNothingLeft(sb, engine, [hostFile])).toEqual(NOTHING);
  expect(await writtenOnHost(sb, image)).toBe(`${word}\n`);
}

