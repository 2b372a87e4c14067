/** `losetup --help`, in util-linux 2.38.1's layout (`--version`: ../version.ts). */
import { COLUMNS } from './columns.js';

export function usage(prog: string): string {
  const cols = COLUMNS.map((c) => ` ${c.name.padStart(12)}  ${c.help}\n`).join('');
  return `
Usage:
 ${prog} [options] [<loopdev>]
 ${prog} [options] -f | <loopdev> <file>

Set up and control loop devices.

Options:
 -a, --all                     list all used devices
 -d, --detach <loopdev>...     detach one or more devices
 -D, --detach-all              detach all used devices
 -f, --find                    find first unused device
 -c, --set-capacity <loopdev>  resize the device
 -j, --associated <file>       list all devices associated with <file>
 -L, --nooverlap               avoid possible conflict between devices

 -o, --offset <num>            start at offset <num> into file
     --sizelimit <num>         device is limited to <num> bytes of the file
 -b, --sector-size <num>       set the logical sector size to <num>
 -P, --partscan                create a partitioned loop device
 -r, --read-only               set up a read-only loop device
     --direct-io[=<on|off>]    open backing file with O_DIRECT
     --show                    print device name after setup (with -f)
 -v, --verbose                 verbose mode

 -J, --json                    use JSON --list output format
 -l, --list                    list info about all or specified (default)
 -n, --noheadings              don't print headings for --list output
 -O, --output <cols>           specify columns to output for --list
     --output-all              output all columns
     --raw                     use raw --list output format

     --instance <dir>          use the loop devices of instance <dir>
                                 (default: $LOOPFS_INSTANCE, then /dev/loopfs)

 -h, --help                    display this help
 -V, --version                 display version

Available output columns:
${cols}
For more details see losetup(8).
`;
}
