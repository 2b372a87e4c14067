/**
 * The loop driver: is it loaded, is /dev/loop-control the real control device, can we
 * use it. Everything else depends on this.
 */
import { closeSync, existsSync, openSync, statSync } from 'node:fs';
import { major, minor } from '../kernel/devnum.js';
import { LOOP_CONTROL_PATH } from '../kernel/loop-control.js';
import { loopNamesInSysfs, SysfsLoop } from '../kernel/sysfs.js';
import { toSysError } from '../kernel/errors.js';
import type { Check } from './check.js';

/** misc device 10:237 (Documentation/admin-guide/devices.txt). */
const LOOP_CONTROL_DEVNO = [10, 237] as const;

export const loopDriverCheck: Check = {
  id: 'loop-driver',
  title: 'loop driver',
  run(ctx) {
    const loaded = existsSync('/sys/module/loop') || loopNamesInSysfs().length > 0;
    if (!loaded) {
      return { status: 'fail', detail: 'the loop driver is not loaded', fix: { command: 'modprobe loop', safe: false } };
    }
    let st;
    try {
      st = statSync(LOOP_CONTROL_PATH, { bigint: true });
    } catch {
      // ENOENT mostly; any error means no usable loop-control, which is the finding
      return {
        status: 'fail',
        detail: `${LOOP_CONTROL_PATH} is missing`,
        fix: { command: `mknod -m 0660 ${LOOP_CONTROL_PATH} c ${LOOP_CONTROL_DEVNO.join(' ')}`, safe: false },
      };
    }
    const devno = [major(st.rdev), minor(st.rdev)];
    if (!st.isCharacterDevice() || devno[0] !== LOOP_CONTROL_DEVNO[0] || devno[1] !== LOOP_CONTROL_DEVNO[1]) {
      return {
        status: 'fail',
        detail: `${LOOP_CONTROL_PATH} is not the loop control device (${st.isCharacterDevice() ? `char ${devno.join(':')}` : 'not a character device'})`,
        fix: {
          command: `rm ${LOOP_CONTROL_PATH} && mknod -m 0660 ${LOOP_CONTROL_PATH} c ${LOOP_CONTROL_DEVNO.join(' ')}`,
          safe: false,
        },
      };
    }
    if (ctx.root) {
      try {
        closeSync(openSync(LOOP_CONTROL_PATH, 'r+'));
      } catch (e) {
        return { status: 'fail', detail: `${LOOP_CONTROL_PATH}: ${toSysError(e).description}` };
      }
    }
    const names = loopNamesInSysfs();
    const bound = names.filter((n) => SysfsLoop.forName(n).isBound()).length;
    return { status: 'ok', detail: `${LOOP_CONTROL_PATH} ${devno.join(':')}; ${names.length} loop device(s), ${bound} bound` };
  },
};
