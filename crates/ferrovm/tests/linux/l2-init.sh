# Body of the L2 guest's /init (after proc/sys/devtmpfs are mounted; `poweroff -f` follows).
# The scenario comes from the kernel command line: ferrovm.test=NAME.
t=$(sed -n 's/.*ferrovm\.test=\([a-z0-9]*\).*/\1/p' /proc/cmdline)
echo "@@L2-USERSPACE-UP@@ test=$t"

# write_marker DISK: writes a marker at 1 MiB of /dev/DISK and reads it back from the disk
# (not the page cache), printing RW_WRITE_RC= and READBACK=.
write_marker() {
  printf 'ferrovm-wrote-this-%s' "$((6*7))" >/tmp/marker
  dd if=/tmp/marker of=/dev/$1 bs=512 seek=2048 conv=sync,fsync 2>/dev/null
  echo "RW_WRITE_RC=$?"
  echo 3 >/proc/sys/vm/drop_caches
  echo "READBACK=$(dd if=/dev/$1 bs=512 skip=2048 count=1 2>/dev/null | tr -d '\0')"
}

case "$t" in
  fill)
    # Touches about 200 MiB of guest RAM (for the jail's cgroup memory limit).
    mkdir -p /mnt/fill && mount -t tmpfs -o size=240m tmpfs /mnt/fill
    dd if=/dev/zero of=/mnt/fill/f bs=1M count=200 2>/dev/null
    echo "FILLED rc=$?"
    ;;
  smp)
    echo "NPROC=$(nproc)"
    ;;
  panic)
    # Killing init makes the kernel panic; panic=-1 then resets at once.
    exit 1
    ;;
  rng)
    @VIRTIO_INSMOD@
    echo "RNG_CURRENT=$(cat /sys/class/misc/hw_random/rng_current)"
    echo "RNG_BYTES=$(dd if=/dev/hwrng bs=32 count=1 2>/dev/null | od -An -tx1 | tr -d ' \n')"
    echo "RNG_BYTES=$(dd if=/dev/hwrng bs=32 count=1 2>/dev/null | od -An -tx1 | tr -d ' \n')"
    ;;
  blk)
    # vda: read-only pattern image; vdb: writable scratch image.
    @VIRTIO_INSMOD@
    for d in vda vdb; do
      echo "DEV $d size=$(cat /sys/block/$d/size) ro=$(cat /sys/block/$d/ro) serial=$(cat /sys/block/$d/serial)"
    done
    echo "SUM_VDA=$(sha256sum /dev/vda | cut -d' ' -f1)"
    dd if=/dev/zero of=/dev/vda bs=512 count=1 conv=fsync 2>/dev/null
    echo "RO_WRITE_RC=$?"
    write_marker vdb
    # Discard the first MiB (a hole in the host file), then it reads as zeros.
    blkdiscard -o 0 -l 1048576 /dev/vdb
    echo "DISCARD_RC=$?"
    sync
    ;;
  blk1)
    # One writable disk: print its checksum, then write a marker at 1 MiB and sync.
    @VIRTIO_INSMOD@
    echo "SUM_VDA=$(sha256sum /dev/vda | cut -d' ' -f1)"
    write_marker vda
    # 300 separate 4 KiB requests (each one queue notification).
    dd if=/dev/vda of=/dev/null bs=4096 count=300 iflag=direct 2>/dev/null
    echo "DIRECT_READS_RC=$?"
    ;;
  api)
    # Configured and booted over the API. Ctrl+Alt+Del on the keyboard makes the kernel
    # send SIGINT to init: power off cleanly. A tick every 0.2 s shows progress, with the
    # size of vda (which the host swaps for a bigger image while the guest runs).
    # The kernel's default (C_A_D on) reboots at once; init asks for the signal instead,
    # as systemd and busybox init do.
    echo 0 >/proc/sys/kernel/ctrl-alt-del
    trap 'echo "CTRL-ALT-DEL received"; poweroff -f' INT
    @VIRTIO_INSMOD@
    echo "KBD=$(grep -c -i 'AT Translated Set 2 keyboard' /proc/bus/input/devices)"
    echo "API-READY"
    n=0
    while :; do
      n=$((n + 1))
      echo "TICK $n size=$(cat /sys/block/vda/size 2>/dev/null)"
      sleep 0.2
    done &
    while :; do sleep 1; done
    ;;
  console)
    # Commands typed on the host arrive on the serial console.
    echo "READY"
    while read -r line; do
      case "$line" in
        reboot) reboot -f ;;
        poweroff) poweroff -f ;;
        *) eval "$line" ;;
      esac
    done
    ;;
esac
