#!/usr/bin/env node
// Entry point behind bin/mount.loop; argv: <helper path as invoked> <helper args...>
import { mountLoop } from '../dist/bundle/mount.loop.mjs';

process.exitCode = await mountLoop({ argv0: process.argv[2] ?? 'mount.loop', args: process.argv.slice(3) });
