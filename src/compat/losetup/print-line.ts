/**
 * The one-line device description of `losetup -a`, `-j FILE` and `losetup DEV`:
 *   /dev/loop0: [65024]:2147812 (/srv/img)[, offset N][, sizelimit N][, encryption X (type N)]
 * Without permission for LOOP_GET_STATUS64 the ids are unknown and util-linux prints `[]:`.
 */
import type { LoopDevice } from '../../kernel/loop-device.js';
import { cString } from '../../kernel/loop-device.js';

/** printf("%04jd"): zero-padded to a minimum width of 4. */
function pad4(v: bigint): string {
  return v < 0n ? `-${(-v).toString().padStart(3, '0')}` : v.toString().padStart(4, '0');
}

/** Returns null when the device has no backing file (unbound): util-linux prints nothing then. */
export function deviceLine(dev: LoopDevice): string | null {
  const file = dev.backingFile();
  if (file === null) return null;
  const ids = dev.backingIds();
  const offset = dev.offset();
  const sizelimit = dev.sizelimit();
  const tail = (offset ? `, offset ${offset}` : '') + (sizelimit ? `, sizelimit ${sizelimit}` : '');

  if (!ids || (!ids.dev && !ids.ino)) return `${dev.path}: []: (${file})${tail}\n`;

  let line = `${dev.path}: [${pad4(BigInt.asIntN(64, ids.dev))}]:${ids.ino} (${file})${tail}`;
  const info = dev.tryStatus();
  if (info) {
    // nearly every device has no crypt name: no Buffer slice and decode for it
    let crypt = info.cryptName[0] === 0 ? '' : cString(info.cryptName);
    if (!crypt && info.encryptType === 1) crypt = 'XOR';
    if (crypt) line += `, encryption ${crypt} (type ${info.encryptType})`;
  }
  return `${line}\n`;
}
