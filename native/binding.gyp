{
  "targets": [
    {
      "target_name": "loopfs",
      "sources": [
        "addon.cc",
        "args.cc",
        "blk.cc",
        "constants.cc",
        "errors.cc",
        "fdwatch.cc",
        "fs.cc",
        "fs_at.cc",
        "read_files.cc",
        "loop.cc",
        "loop_control.cc",
        "loop_info.cc",
        "mount_api.cc",
        "ns.cc",
        "seccomp.cc",
        "socket.cc",
        "spawn.cc",
        "uevent.cc"
      ],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")"
      ],
      "defines": [
        "NAPI_VERSION=8",
        "NAPI_CPP_EXCEPTIONS"
      ],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags": ["-Wall", "-Wextra"],
      "cflags_cc": ["-fexceptions"]
    },
    {
      # native/fuse_exec.c, a program of its own (src/kernel/fuse-exec.ts); linked
      # statically where the C library can be (two execs on every FUSE mount's path)
      "target_name": "loopfs-fuse-exec",
      "type": "executable",
      "sources": ["fuse_exec.c"],
      "cflags": ["-Wall", "-Wextra", "-O2"],
      "ldflags": ["<!@(sh -c 'test -e \"$(${CC:-cc} -print-file-name=libc.a)\" && echo -static || true')"]
    }
  ]
}
