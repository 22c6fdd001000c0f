#!/usr/bin/env bash
# Boot the host's Debian kernel (package linux-image-amd64) with a busybox initramfs to a
# shell under ferrovm.
#
#   bash scripts/run-linux.sh [extra ferrovm run flags...]
#
# Where this host's CPU has hardware virtualization (vmx/svm), the shell is interactive
# (type `poweroff` to leave, or Ctrl-A x). Where it has none (KVM without VT-x/AMD-V,
# e.g. PVM, cannot run a stock kernel), the same command boots the guest inside the nested
# testbed (a throwaway L1 Linux under QEMU TCG with a real KVM) and runs a few commands in
# its shell non-interactively, and says so.
set -euo pipefail
cd "$(dirname "$0")/.."

FERROVM=target/x86_64-unknown-linux-gnu/release/ferrovm
TESTBED=target/x86_64-unknown-linux-gnu/release/testbed
KERNEL=$(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -V | tail -1 || true)
BUSYBOX=/bin/busybox
[ -x "$FERROVM" ] && [ -x "$TESTBED" ] || { echo "run-linux: build first: bash scripts/setup.sh" >&2; exit 2; }
[ -n "$KERNEL" ] || { echo "run-linux: no /boot/vmlinuz-*: install linux-image-amd64 (bash scripts/setup.sh)" >&2; exit 2; }
[ -x "$BUSYBOX" ] || { echo "run-linux: $BUSYBOX missing: install busybox-static (bash scripts/setup.sh)" >&2; exit 2; }

# The initramfs: busybox, its applet links, and an /init that starts a shell on the console.
INITRD=target/run-linux/initrd.cpio
if [ ! -s "$INITRD" ] || [ "$INITRD" -ot "$0" ] || [ "$INITRD" -ot "$BUSYBOX" ]; then
  root=$(mktemp -d)
  mkdir -p "$root"/{bin,dev,proc,sys,tmp,root,etc}
  # init's stdin/stdout come from /dev/console, opened before devtmpfs is mounted.
  mknod -m 600 "$root/dev/console" c 5 1 || { echo "run-linux: cannot create dev/console (run as root)" >&2; exit 2; }
  cp "$BUSYBOX" "$root/bin/busybox"
  for a in $("$BUSYBOX" --list); do [ "$a" = busybox ] || ln -s busybox "$root/bin/$a"; done
  cat >"$root/init" <<'INIT'
#!/bin/sh
export PATH=/bin HOME=/root
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "ferrovm guest: $(uname -sr), $(nproc) CPU(s), $(free -m | awk '/Mem:/ {print $2}') MiB; type 'poweroff' to leave"
cd /root
# /init is a shell, not busybox init: busybox's poweroff/reboot/halt (without -f) signal
# PID 1 (SIGUSR2/SIGTERM/SIGUSR1); act on those signals.
trap 'busybox poweroff -f' USR2
trap 'busybox reboot -f' TERM
trap 'busybox halt -f' USR1
setsid cttyhack sh &
wait
poweroff -f
INIT
  chmod +x "$root/init"
  mkdir -p "$(dirname "$INITRD")"
  (cd "$root" && find . | cpio -o -H newc --quiet) >"$INITRD.tmp"
  mv "$INITRD.tmp" "$INITRD"
  rm -rf "$root"
fi

if grep -qwE 'vmx|svm' /proc/cpuinfo; then
  exec "$FERROVM" run --kernel "$KERNEL" --initrd "$INITRD" --mem 512M --cpus 2 "$@"
fi

echo "run-linux: this CPU has no hardware virtualization (no vmx/svm), so a stock kernel cannot"
echo "run on its /dev/kvm. Running ferrovm inside the nested testbed instead (L1 Linux under"
echo "QEMU TCG with a real KVM); the guest shell runs these commands non-interactively:"
CMDS='uname -a; nproc; grep MemTotal /proc/meminfo; ls /; poweroff'
echo "  $CMDS"
script=$(mktemp)
extra=""
for a in "$@"; do extra="$extra '$a'"; done
# In L1: ferrovm's stdin is a FIFO; the commands are typed once the guest shows its prompt.
cat >"$script" <<JOB
trap '' PIPE
mkfifo /tmp/in
timeout -s KILL 300 /ferrovm run --kernel /l2/bzImage --initrd /l2/shell.cpio --mem 512M --cpus 2 $extra </tmp/in | tee /tmp/out &
exec 3>/tmp/in
n=0
while ! grep -q '# ' /tmp/out 2>/dev/null && [ \$n -lt 1200 ]; do sleep 0.1; n=\$((n + 1)); done
echo '$CMDS' | sed 's/; /\n/g' >&3
wait
JOB
exec "$TESTBED" run-script "$script" --bin "$FERROVM:/ferrovm" --file "$KERNEL:/l2/bzImage" --file "$INITRD:/l2/shell.cpio" --timeout 600
