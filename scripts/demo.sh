#!/usr/bin/env bash
# End-to-end demo: build an ext4 image, attach it with loopfs's losetup, list it in
# util-linux format, mount it, read a file back, and clean everything up (also on
# failure). Needs root and the loop driver.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
losetup="$here/bin/losetup"

if [ "$(id -u)" -ne 0 ] || [ ! -e /dev/loop-control ]; then
  echo "demo: needs root and the loop driver (/dev/loop-control)" >&2
  exit 1
fi

work=$(mktemp -d /tmp/loopfs-demo.XXXXXX)
dev=""
cleanup() {
  if mountpoint -q "$work/mnt" 2>/dev/null; then umount "$work/mnt"; fi
  if [ -n "$dev" ]; then "$losetup" -d "$dev" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/content" "$work/mnt"
echo "hello from a loop device" > "$work/content/hello.txt"
mkfs.ext4 -q -F -L loopfs-demo -d "$work/content" "$work/disk.img" 16M

echo "\$ losetup -f --show disk.img"
dev=$("$losetup" -f --show "$work/disk.img")
echo "$dev"

echo "\$ losetup -l $dev"
"$losetup" -l "$dev"

echo "\$ losetup -j disk.img"
"$losetup" -j "$work/disk.img"

echo "\$ mount -o ro $dev mnt && cat mnt/hello.txt"
mount -o ro "$dev" "$work/mnt"
cat "$work/mnt/hello.txt"

umount "$work/mnt"
echo "\$ losetup -d $dev"
"$losetup" -d "$dev"
dev=""
echo "demo: ok"
