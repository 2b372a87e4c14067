// parseLoopUevent (src/kernel/uevents.ts): the kernel's NETLINK_KOBJECT_UEVENT datagrams, byte
// for byte as lib/kobject_uevent.c sends them ("ACTION@DEVPATH\0" then "KEY=VALUE\0" fields,
// every one NUL-terminated), taken from `udevadm monitor --kernel --property` on this VM.
// Pure parsing: no device, no socket.
import { describe, expect, it } from 'vitest';
import { parseLoopUevent, type LoopUevent } from '../../src/kernel/uevents.js';

/** A datagram as the kernel lays it out: the header, then each field, all NUL-terminated. */
function msg(header: string, fields: string[]): Buffer {
  return Buffer.from([header, ...fields].map((f) => `${f}\0`).join(''), 'latin1');
}

const PART_ADD = msg('add@/devices/virtual/block/loop8/loop8p1', [
  'ACTION=add',
  'DEVPATH=/devices/virtual/block/loop8/loop8p1',
  'SUBSYSTEM=block',
  'MAJOR=259',
  'MINOR=0',
  'DEVNAME=loop8p1',
  'DEVTYPE=partition',
  'DISKSEQ=21',
  'PARTN=1',
  'SEQNUM=1213',
]);

describe('parseLoopUevent', () => {
  it('a partition add (BLKPG from partx -a) gives disk, partition and numbers', () => {
    expect(PART_ADD.includes(0)).toBe(true);
    expect(parseLoopUevent(PART_ADD)).toEqual<LoopUevent>({
      action: 'add',
      devname: 'loop8p1',
      disk: 8,
      partition: 1,
      major: 259,
      minor: 0,
      mediaChange: false,
      seqnum: 1213n,
    });
  });

  it('a partition remove, without PARTN (the kernel sends it on remove of some partitions)', () => {
    const m = msg('remove@/devices/virtual/block/loop12/loop12p3', [
      'ACTION=remove',
      'DEVPATH=/devices/virtual/block/loop12/loop12p3',
      'SUBSYSTEM=block',
      'MAJOR=259',
      'MINOR=7',
      'DEVNAME=loop12p3',
      'DEVTYPE=partition',
      'SEQNUM=99',
    ]);
    expect(parseLoopUevent(m)).toEqual<LoopUevent>({
      action: 'remove',
      devname: 'loop12p3',
      disk: 12,
      partition: 3,
      major: 259,
      minor: 7,
      mediaChange: false,
      seqnum: 99n,
    });
  });

  it('a bind or unbind: change of the whole disk with DISK_MEDIA_CHANGE=1', () => {
    const m = msg('change@/devices/virtual/block/loop41', [
      'ACTION=change',
      'DEVPATH=/devices/virtual/block/loop41',
      'SUBSYSTEM=block',
      'DISK_MEDIA_CHANGE=1',
      'MAJOR=7',
      'MINOR=41',
      'DEVNAME=loop41',
      'DEVTYPE=disk',
      'DISKSEQ=77',
      'SEQNUM=5000',
    ]);
    expect(parseLoopUevent(m)).toEqual<LoopUevent>({
      action: 'change',
      devname: 'loop41',
      disk: 41,
      partition: null,
      major: 7,
      minor: 41,
      mediaChange: true,
      seqnum: 5000n,
    });
  });

  it('a device added by LOOP_CTL_ADD (minor above 255 too) and removed by LOOP_CTL_REMOVE', () => {
    const add = msg('add@/devices/virtual/block/loop300', [
      'ACTION=add',
      'DEVPATH=/devices/virtual/block/loop300',
      'SUBSYSTEM=block',
      'MAJOR=7',
      'MINOR=300',
      'DEVNAME=loop300',
      'DEVTYPE=disk',
      'DISKSEQ=4',
      'SEQNUM=18446744073709551615',
    ]);
    expect(parseLoopUevent(add)).toEqual<LoopUevent>({
      action: 'add',
      devname: 'loop300',
      disk: 300,
      partition: null,
      major: 7,
      minor: 300,
      mediaChange: false,
      seqnum: 18446744073709551615n,
    });
    const rm = msg('remove@/devices/virtual/block/loop300', [
      'ACTION=remove',
      'DEVPATH=/devices/virtual/block/loop300',
      'SUBSYSTEM=block',
      'MAJOR=7',
      'MINOR=300',
      'DEVNAME=loop300',
      'DEVTYPE=disk',
      'SEQNUM=19',
    ]);
    expect(parseLoopUevent(rm)?.action).toBe('remove');
    expect(parseLoopUevent(rm)?.disk).toBe(300);
  });

  it('a non-numeric SEQNUM gives a null seqnum, not a failure', () => {
    const m = msg('change@/devices/virtual/block/loop2', [
      'ACTION=change',
      'SUBSYSTEM=block',
      'MAJOR=7',
      'MINOR=2',
      'DEVNAME=loop2',
      'DEVTYPE=disk',
      'SEQNUM=12x',
    ]);
    expect(parseLoopUevent(m)?.seqnum).toBeNull();
  });

  it('block devices that are not loop devices are ignored', () => {
    const disk = (name: string, major: number, devtype = 'disk') =>
      msg(`change@/devices/virtual/block/${name}`, [
        'ACTION=change',
        `DEVPATH=/devices/virtual/block/${name}`,
        'SUBSYSTEM=block',
        `MAJOR=${major}`,
        'MINOR=0',
        `DEVNAME=${name}`,
        `DEVTYPE=${devtype}`,
        'SEQNUM=1',
      ]);
    expect(parseLoopUevent(disk('vda', 254))).toBeNull();
    expect(parseLoopUevent(disk('vda1', 254, 'partition'))).toBeNull();
    expect(parseLoopUevent(disk('nbd0', 43))).toBeNull();
    expect(parseLoopUevent(disk('zram0', 252))).toBeNull();
    expect(parseLoopUevent(disk('dm-0', 253))).toBeNull();
    // a name that merely starts or ends like one
    expect(parseLoopUevent(disk('loopback0', 7))).toBeNull();
    expect(parseLoopUevent(disk('xloop1', 7))).toBeNull();
    expect(parseLoopUevent(disk('loop1p', 7, 'partition'))).toBeNull();
  });

  it('loop events of other subsystems (the bdi, the module) are ignored', () => {
    const bdi = msg('add@/devices/virtual/bdi/7:8', ['ACTION=add', 'DEVPATH=/devices/virtual/bdi/7:8', 'SUBSYSTEM=bdi', 'SEQNUM=3']);
    expect(parseLoopUevent(bdi)).toBeNull();
    const mod = msg('add@/module/loop', ['ACTION=add', 'DEVPATH=/module/loop', 'SUBSYSTEM=module', 'SEQNUM=4']);
    expect(parseLoopUevent(mod)).toBeNull();
    // DEVNAME of a loop disk, but the queue's kobject: no block subsystem
    const q = msg('change@/devices/virtual/block/loop8/queue', ['ACTION=change', 'SUBSYSTEM=queue', 'DEVNAME=loop8', 'MAJOR=7', 'MINOR=8', 'SEQNUM=5']);
    expect(parseLoopUevent(q)).toBeNull();
  });

  it('actions other than add, remove, change are ignored', () => {
    for (const action of ['bind', 'unbind', 'move', 'online', 'offline', '']) {
      const m = msg(`${action}@/devices/virtual/block/loop8`, [
        `ACTION=${action}`,
        'SUBSYSTEM=block',
        'MAJOR=7',
        'MINOR=8',
        'DEVNAME=loop8',
        'DEVTYPE=disk',
        'SEQNUM=6',
      ]);
      expect(parseLoopUevent(m), action).toBeNull();
    }
  });

  it('malformed messages give null', () => {
    const good = ['ACTION=add', 'SUBSYSTEM=block', 'MAJOR=259', 'MINOR=0', 'DEVNAME=loop8p1', 'DEVTYPE=partition', 'PARTN=1', 'SEQNUM=7'];
    const without = (key: string) => good.filter((f) => !f.startsWith(`${key}=`));
    const header = 'add@/devices/virtual/block/loop8/loop8p1';
    expect(parseLoopUevent(Buffer.alloc(0))).toBeNull();
    expect(parseLoopUevent(Buffer.from('\0\0\0'))).toBeNull();
    expect(parseLoopUevent(Buffer.from(`${header}\0`, 'latin1'))).toBeNull(); // header only
    // the header alone says nothing: the fields decide
    expect(parseLoopUevent(msg(header, without('ACTION')))).toBeNull();
    expect(parseLoopUevent(msg(header, without('SUBSYSTEM')))).toBeNull();
    expect(parseLoopUevent(msg(header, without('DEVNAME')))).toBeNull();
    expect(parseLoopUevent(msg(header, without('MAJOR')))).toBeNull();
    expect(parseLoopUevent(msg(header, without('MINOR')))).toBeNull();
    expect(parseLoopUevent(msg(header, [...without('MAJOR'), 'MAJOR=7x']))).toBeNull();
    expect(parseLoopUevent(msg(header, [...without('MINOR'), 'MINOR=-']))).toBeNull();
    expect(parseLoopUevent(msg(header, [...without('MINOR'), 'MINOR=1.5']))).toBeNull();
    // a partition name whose DEVTYPE says disk, and the reverse
    expect(parseLoopUevent(msg(header, [...without('DEVTYPE'), 'DEVTYPE=disk']))).toBeNull();
    expect(parseLoopUevent(msg(header, without('DEVTYPE')))).toBeNull();
    const diskAsPartition = ['ACTION=add', 'SUBSYSTEM=block', 'MAJOR=7', 'MINOR=8', 'DEVNAME=loop8', 'DEVTYPE=partition'];
    expect(parseLoopUevent(msg('add@/devices/virtual/block/loop8', diskAsPartition))).toBeNull();
    // PARTN that disagrees with the name
    expect(parseLoopUevent(msg(header, [...without('PARTN'), 'PARTN=2']))).toBeNull();
    // fields without '=' or with an empty key are skipped, not misread
    expect(parseLoopUevent(msg(header, ['ACTION', '=add', ...without('ACTION')]))).toBeNull();
    // binary garbage
    expect(parseLoopUevent(Buffer.from([0xff, 0xfe, 0x00, 0x41, 0x3d, 0x00]))).toBeNull();
    // a libudev re-broadcast (its binary header) is not a kernel message
    const libudev = Buffer.concat([Buffer.from('libudev\0', 'latin1'), Buffer.from([0xfe, 0xed, 0xca, 0xfe]), Buffer.alloc(32)]);
    expect(parseLoopUevent(libudev)).toBeNull();
  });

  it('a message without the trailing NUL still parses (the last field is complete)', () => {
    const b = PART_ADD.subarray(0, PART_ADD.length - 1);
    expect(b[b.length - 1]).not.toBe(0);
    expect(parseLoopUevent(b)?.seqnum).toBe(1213n);
  });
});
