import { Flags } from '@oclif/core';
import { accessSync, constants as fsConstants, statSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { LoopfsCommand } from '../cli/base-command.js';
import { splitLauncherArgv, valueFlags } from '../cli/command-argv.js';
import { DEFAULT_ALLOWED_FS } from '../broker/ops.js';
import { LocalInstance } from '../instance/local-instance.js';
import { instanceDirFor } from '../instance/resolve.js';
import { Supervisor } from '../intercept/supervisor.js';
import { parseFsList } from './serve.js';

export default class Run extends LoopfsCommand {
  static summary = 'Run a command whose mount(2) of an instance loop device is performed for it (seccomp user notification).';
  static description =
    'Starts CMD (a container init, a shell) under a seccomp filter that traps mount(2). When a process of CMD that is ' +
    'root of its own user namespace mounts a block device, loopfs mounts it for it if the device is a bound loop device ' +
    'of the instance and the filesystem is allowed: always nosuid,nodev, ID-mapped to its user namespace, in its own ' +
    'mount namespace at its target, so that unmodified `mount -o loop IMG DIR` works in an unprivileged container whose ' +
    '/dev was prepared with `loopfs activate`. Other block devices and filesystems, filesystem options, and remounts ' +
    'dropping nosuid or nodev are refused with EPERM; every other mount goes to the kernel unchanged. The new mount API ' +
    '(fsopen, move_mount, mount_setattr, ...) answers ENOSYS under the filter, so tools fall back to mount(2). ' +
    'Runs as root; exits with the status of CMD, killing whatever CMD left running. Every word after the first `--` ' +
    'is passed to CMD exactly as given; without `--`, CMD starts at the first word that is not an option.';
  static examples = [
    '<%= config.bin %> run --instance /run/loopfs/ct1 -- setpriv --reuid 1000 --regid 1000 --clear-groups unshare -r -m sh',
  ];
  static usage = 'run [--instance DIR] [--allow-fs FS,...] [--fuse] [-v] [--] CMD [ARG...]';
  // CMD's words never reach oclif's parser (src/cli/command-argv.ts): the options end at the
  // first `--` or at the first word that is not an option. Without `--`, oclif itself still
  // answers a `--help` anywhere on the line, so `--` is the form to use for arbitrary CMDs.
  static strict = false;
  static enableJsonFlag = false;
  static flags = {
    instance: Flags.string({ description: 'the instance whose devices may be mounted (default: $LOOPFS_INSTANCE, /dev/loopfs)' }),
    'allow-fs': Flags.string({
      description: `comma-separated filesystem types to mount (default: ${DEFAULT_ALLOWED_FS.join(',')}; "" for none)`,
    }),
    fuse: Flags.boolean({ description: 'mount through fuse2fs (ext2/3/4) or squashfuse (squashfs) instead of the kernel' }),
    verbose: Flags.boolean({ char: 'v', description: 'log every mount judged (to stderr)' }),
  };

  async run(): Promise<void> {
    const { options, command: cmd } = splitLauncherArgv(this.argv, valueFlags(Run.flags));
    const { flags } = await this.parse(Run, options);
    if (cmd.length === 0) this.fail('run: no command given (loopfs run [--instance DIR] -- CMD [ARG...])');
    if (process.geteuid?.() !== 0) this.fail('run: must run as root');
    const dir = instanceDirFor(flags.instance ?? null, process.env);
    if (dir === null) this.fail('run: no instance given (--instance DIR or $LOOPFS_INSTANCE)');
    if (!LocalInstance.isInstance(dir)) this.fail(`run: ${dir}: not a loop device instance managed here`);
    const allowFs = flags['allow-fs'] === undefined ? DEFAULT_ALLOWED_FS : parseFsList(flags['allow-fs']);
    if (allowFs === null) this.fail(`run: invalid --allow-fs '${flags['allow-fs']}': expected filesystem type names separated by commas`);
    const file = findExecutable(cmd[0], process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin');
    if (file === null) this.fail(`run: ${cmd[0]}: command not found`);

    const log = flags.verbose ? (line: string) => process.stderr.write(`loopfs run: ${line}\n`) : undefined;
    let supervisor: Supervisor | null = null;
    const forward = (sig: NodeJS.Signals) => supervisor?.signal(sig);
    const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT'];
    for (const s of signals) process.on(s, forward);
    let result;
    try {
      result = await Supervisor.run({ file, argv: cmd, env: process.env, instanceDir: dir, allowFs, fuse: flags.fuse, log }, (s) => (supervisor = s));
    } finally {
      for (const s of signals) process.off(s, forward);
    }
    this.exit(result.code ?? 128 + (result.signal ?? 0));
  }
}

/** CMD as execvp would find it: a name with a slash as is, else the first executable file in PATH. */
function findExecutable(name: string, path: string): string | null {
  const candidates = name.includes('/') ? [name] : path.split(delimiter).filter(Boolean).map((d) => join(d, name));
  for (const c of candidates) {
    try {
      if (statSync(c).isFile()) {
        accessSync(c, fsConstants.X_OK);
        return c;
      }
    } catch {
      /* next */
    }
  }
  return null;
}
