// Entry of the node half of bin/loopfs-runtime (create/run only; see runtime/main.ts).
import { runtimeMain } from './runtime/main.js';

process.exitCode = runtimeMain(process.argv.slice(2));
