import { Flags } from '@oclif/core';
import { renameSync, unlinkSync, writeFileSync } from 'node:fs';
import { LoopfsCommand } from '../cli/base-command.js';
import { sysError, toSysError } from '../kernel/errors.js';
import { DEFAULT_PROFILE, profileWithAgent } from '../oci/seccomp-edit.js';

export default class SeccompProfile extends LoopfsCommand {
  static summary = "Write an engine's seccomp profile with loopfs's seccomp agent in it (mount(2) handled by `loopfs oci-broker`).";
  static description =
    'Reads the profile (default: podman\'s ' +
    DEFAULT_PROFILE +
    '), sends mount(2) to the agent (SCMP_ACT_NOTIFY), answers the new mount API (open_tree, move_mount, fsopen, ' +
    'fsconfig, fsmount, fspick, mount_setattr) with ENOSYS, and sets listenerPath to $LOOPFS_RUNTIME_DIR/seccomp.sock ' +
    "and listenerMetadata to the profile's own verdict on mount(2), which the agent applies to every mount it does not " +
    'perform. For `podman run --security-opt seccomp=FILE` without the runtime wrapper.';
  static examples = [
    '<%= config.bin %> seccomp-profile -o /etc/loopfs/seccomp.json',
    'podman run --annotation io.loopfs.instance=true --security-opt seccomp=/etc/loopfs/seccomp.json ...',
  ];
  static flags = {
    from: Flags.string({ default: DEFAULT_PROFILE, description: "the engine's profile to start from" }),
    output: Flags.string({ char: 'o', description: 'write the profile to FILE instead of standard output' }),
  };

  async run(): Promise<{ output: string | null; listenerPath: string; listenerMetadata: string }> {
    const { flags } = await this.parse(SeccompProfile);
    const { profile, text } = profileWithAgent(flags.from);
    if (flags.output) writeWhole(flags.output, text);
    else this.log(text.trimEnd());
    return { output: flags.output ?? null, listenerPath: profile.listenerPath ?? '', listenerMetadata: profile.listenerMetadata ?? '' };
  }
}

/** All of it or nothing: a failed write leaves no truncated profile for an engine to load. */
function writeWhole(file: string, text: string): void {
  const tmp = `${file}.${process.pid}.tmp`;
  try {
    writeFileSync(tmp, text, { mode: 0o644 });
    renameSync(tmp, file);
  } catch (e) {
    try {
      unlinkSync(tmp);
    } catch {
      // not created
    }
    // name the file the user gave, not the temporary one
    throw sysError(toSysError(e).code, 'open', file);
  }
}
