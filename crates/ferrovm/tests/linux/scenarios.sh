# Linux boot scenarios for ferrovm, run where /dev/kvm has hardware virtualization (inside
# the nested testbed's L1, or directly on such a host). $FERROVM is the binary, $L2 the
# directory with vmlinux, bzImage and initrd.cpio. Each scenario prints
# "RESULT <name> status=<exit status>" and its guest output between BEGIN/END lines.
trap "" PIPE  # a guest that exits early must not kill this script through SIGPIPE
# mitigations=off: see testbed::guest::NESTED_GUEST_ARGS (QEMU TCG mis-runs the
# kernel's return thunks now and then).
CMD="console=ttyS0 panic=-1 pci=off quiet mitigations=off"
RUN="$FERROVM run --mem 256M --initrd $L2/initrd.cpio"

# A boot takes about 5 s here; QEMU TCG's emulated SVM rarely stalls an L2 for good, so a
# boot killed by its timeout is tried once more (and says so).
scenario() {
  name=$1; shift
  for attempt in 1 2; do
    echo "BEGIN $name"
    timeout -s KILL 60 "$@" </dev/null 2>&1
    rc=$?
    echo "END $name"
    [ $rc -eq 137 ] && [ $attempt -eq 1 ] && { echo "RETRY $name (killed after 60 s)"; continue; }
    break
  done
  echo "RESULT $name status=$rc"
}

# interactive NAME N:LINE... -- COMMAND...: runs COMMAND with its stdin on a FIFO and sends
# each LINE as input once the guest has printed "READY" N times. Stops waiting as soon as
# COMMAND has exited.
interactive() {
  name=$1; shift
  : >/tmp/lines
  while [ "$1" != "--" ]; do echo "$1" >>/tmp/lines; shift; done
  shift
  for attempt in 1 2; do
  rm -f /tmp/in /tmp/out
  mkfifo /tmp/in
  "$@" </tmp/in >/tmp/out 2>&1 &
  pid=$!
  exec 3>/tmp/in
  while read -r spec; do
    n=${spec%%:*}
    line=${spec#*:}
    waited=0
    while [ "$(grep -c READY /tmp/out)" -lt "$n" ] && kill -0 $pid 2>/dev/null && [ $waited -lt 600 ]; do
      sleep 0.1; waited=$((waited + 1))
    done
    echo "$line" >&3
  done </tmp/lines
  exec 3>&-
  waited=0
  while kill -0 $pid 2>/dev/null && [ $waited -lt 600 ]; do sleep 0.1; waited=$((waited + 1)); done
  kill -9 $pid 2>/dev/null
  wait $pid
  rc=$?
  [ $rc -eq 137 ] && [ $attempt -eq 1 ] && { echo "RETRY $name (killed after 60 s)"; continue; }
  break
  done
  echo "BEGIN $name"
  cat /tmp/out
  echo "END $name"
  echo "RESULT $name status=$rc"
}

scenario bzimage-host $RUN --kernel $L2/bzImage --cmdline "$CMD ferrovm.test=boot"
scenario bzimage-guest $RUN --kernel $L2/bzImage --kernel-decompress guest --cmdline "$CMD ferrovm.test=boot"
scenario vmlinux $RUN --kernel $L2/vmlinux --cmdline "$CMD ferrovm.test=boot"
scenario smp $RUN --kernel $L2/bzImage --cpus 2 --cmdline "$CMD ferrovm.test=smp"
scenario panic $RUN --kernel $L2/bzImage --cmdline "$CMD ferrovm.test=panic"
interactive console '1:echo typed-$((6*7))' 1:poweroff -- $RUN --kernel $L2/bzImage --cmdline "$CMD ferrovm.test=console"
interactive reboot 1:reboot 2:poweroff -- $RUN --kernel $L2/bzImage --on-reboot restart --cmdline "$CMD ferrovm.test=console"

# Virtio: entropy, and disks (a read-only pattern image and a scratch image whose first
# MiB is non-zero, with both I/O engines).
scenario rng $RUN --kernel $L2/bzImage --cmdline "$CMD ferrovm.test=rng"
for aio in threads io_uring; do
  dd if=/dev/zero bs=1M count=4 2>/dev/null | tr '\0' 'x' >/tmp/rw-$aio.img
  echo "BLOCKS_BEFORE $aio $(stat -c %b /tmp/rw-$aio.img)"
  scenario blk-$aio $RUN --kernel $L2/bzImage --cmdline "$CMD ferrovm.test=blk" \
    --drive path=$L2/pattern.img,readonly=on,id=pattern,aio=$aio \
    --drive path=/tmp/rw-$aio.img,id=scratch-$aio,aio=$aio
  echo "HOST_MARKER $aio $(dd if=/tmp/rw-$aio.img bs=512 skip=2048 count=1 2>/dev/null | tr -d '\0')"
  echo "HOST_HEAD $aio $(dd if=/tmp/rw-$aio.img bs=4096 count=1 2>/dev/null | tr -d '\0' | wc -c)"
  echo "BLOCKS_AFTER $aio $(stat -c %b /tmp/rw-$aio.img)"
done
# qcow2 (format probed), then --snapshot on a raw copy: the image must stay as it was.
$FERROVM img convert -f raw -O qcow2 $L2/pattern.img /tmp/pattern.qcow2
export FERROVM_LOG=info
scenario blk-qcow2 $RUN --kernel $L2/bzImage --cmdline "$CMD ferrovm.test=blk1" --drive path=/tmp/pattern.qcow2
unset FERROVM_LOG
$FERROVM img check /tmp/pattern.qcow2 >/dev/null 2>&1; echo "QCOW2_CHECK_RC=$?"
$FERROVM img convert -f qcow2 -O raw /tmp/pattern.qcow2 /tmp/pattern-after.raw
echo "QCOW2_MARKER $(dd if=/tmp/pattern-after.raw bs=512 skip=2048 count=1 2>/dev/null | tr -d '\0')"
cp $L2/pattern.img /tmp/snap.raw
mkdir -p /tmp/snaptmp
export TMPDIR=/tmp/snaptmp FERROVM_LOG=info
scenario blk-snapshot $RUN --kernel $L2/bzImage --cmdline "$CMD ferrovm.test=blk1" --snapshot --drive path=/tmp/snap.raw,format=raw
unset TMPDIR FERROVM_LOG
echo "SNAP_SUM=$(sha256sum /tmp/snap.raw | cut -d' ' -f1)"
echo "SNAP_LEFTOVERS=$(ls /tmp/snaptmp | wc -l)"
echo "HOST_SUM_PATTERN=$(sha256sum $L2/pattern.img | cut -d' ' -f1)"

# The API: a VM configured and booted over the socket with curl, paused for 5 s and
# resumed, 1000 requests while it runs, a disk swapped for a bigger one, then Ctrl+Alt+Del.
api() { curl -s --max-time 30 --unix-socket /tmp/api.sock -w ' HTTP=%{http_code}\n' "$@"; }
ticks() { grep -c '^TICK' /tmp/api-out; }
wait_for() { # PATTERN FILE TENTHS
  n=0; while ! grep -q "$1" "$2" 2>/dev/null && [ $n -lt "$3" ]; do sleep 0.1; n=$((n + 1)); done
}
dd if=/dev/zero of=/tmp/api-small.img bs=1M count=1 2>/dev/null
dd if=/dev/zero of=/tmp/api-big.img bs=1M count=3 2>/dev/null
echo "BEGIN api"
rm -f /tmp/api.sock
timeout -s KILL 120 $FERROVM run --api-sock /tmp/api.sock </dev/null >/tmp/api-out 2>&1 &
apipid=$!
n=0; while [ ! -S /tmp/api.sock ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
echo "API_SOCK_MODE=$(stat -c %a /tmp/api.sock)"
api http://localhost/ | sed 's/^/API_INFO_BEFORE /'
api -X PUT http://localhost/machine-config -d '{"vcpu_count": 2, "mem_size_mib": 256}' | sed 's/^/API_PUT_MACHINE /'
api -X PUT http://localhost/boot-source -d "{\"kernel_image_path\": \"$L2/bzImage\", \"initrd_path\": \"$L2/initrd.cpio\", \"boot_args\": \"$CMD ferrovm.test=api\"}" | sed 's/^/API_PUT_BOOT /'
api -X PUT http://localhost/drives/scratch -d '{"drive_id": "scratch", "path_on_host": "/tmp/api-small.img", "is_root_device": false, "is_read_only": false}' | sed 's/^/API_PUT_DRIVE /'
api -X PATCH http://localhost/vm -d '{"state": "Paused"}' | sed 's/^/API_PAUSE_EARLY /'
api -X PUT http://localhost/actions -d '{"action_type": "InstanceStart"}' | sed 's/^/API_START /'
api -X PUT http://localhost/machine-config -d '{"vcpu_count": 1, "mem_size_mib": 128}' | sed 's/^/API_PUT_MACHINE_AFTER /'
wait_for 'TICK 3 ' /tmp/api-out 600
api -X PATCH http://localhost/vm -d '{"state": "Paused"}' | sed 's/^/API_PAUSE /'
api http://localhost/ | sed 's/^/API_INFO_PAUSED /'
sleep 0.5
before=$(ticks)
sleep 5
echo "PAUSED_TICKS $before $(ticks)"
api -X PATCH http://localhost/vm -d '{"state": "Resumed"}' | sed 's/^/API_RESUME /'
sleep 2
echo "RESUMED_TICKS $(ticks)"
codes=$(curl -s --unix-socket /tmp/api.sock -w '%{http_code}\n' $(for i in $(seq 500); do echo -o /dev/null http://localhost/ -o /dev/null http://localhost/vm/exits; done) | sort | uniq -c | tr -s ' ' | tr '\n' ';')
echo "API_1000 $codes"
t=$(ticks); sleep 2
echo "AFTER_1000_TICKS $t $(ticks)"
api -X PATCH http://localhost/drives/scratch -d '{"drive_id": "scratch", "path_on_host": "/tmp/api-big.img"}' | sed 's/^/API_PATCH_DRIVE /'
wait_for 'size=6144' /tmp/api-out 100
api http://localhost/vm/config | sed 's/^/API_CONFIG /'
api http://localhost/vm/exits > /tmp/api-exits.json
echo "API_EXITS_KEYS $(tr ',' '\n' </tmp/api-exits.json | grep -c '"count"')"
api -X PUT http://localhost/actions -d '{"action_type": "SendCtrlAltDel"}' | sed 's/^/API_CAD /'
wait $apipid
echo "API_STATUS=$?"
cat /tmp/api-out
echo "END api"

# --config-file: Firecracker's JSON configuration, booted at once.
cat >/tmp/vm.json <<CFG
{
  "boot-source": { "kernel_image_path": "$L2/bzImage", "initrd_path": "$L2/initrd.cpio",
                   "boot_args": "$CMD ferrovm.test=boot" },
  "machine-config": { "vcpu_count": 1, "mem_size_mib": 256 },
  "drives": [{ "drive_id": "rootfs", "path_on_host": "/tmp/api-small.img", "is_root_device": false,
               "is_read_only": true }],
  "network-interfaces": []
}
CFG
scenario config-file $FERROVM run --config-file /tmp/vm.json
# --jail: a Linux guest boots jailed (as nobody, cgroup v2 limits, its API socket inside
# the jail); a guest that touches more RAM than memory.max allows gets the VMM
# OOM-killed in its cgroup (the limit holds).
mount -t cgroup2 none /sys/fs/cgroup 2>/dev/null
echo "CGROUP2=$(grep -c ' /sys/fs/cgroup cgroup2 ' /proc/mounts)"
JAIL="--jail /tmp/jailroot --uid 65534 --gid 65534"
echo "BEGIN jail"
timeout -s KILL 60 $RUN --kernel $L2/bzImage --cmdline "$CMD ferrovm.test=api" $JAIL --id jailed \
  --cgroup memory.max=400M,pids.max=64 --api-sock /run/api.sock </dev/null >/tmp/jail-out 2>&1 &
jailpid=$!
wait_for 'TICK 2 ' /tmp/jail-out 600
echo "JAIL_API $(curl -s --max-time 10 --unix-socket /tmp/jailroot/run/api.sock http://localhost/)"
echo "JAIL_MEMORY_MAX $(cat /sys/fs/cgroup/ferrovm/jailed/memory.max)"
echo "JAIL_PIDS_MAX $(cat /sys/fs/cgroup/ferrovm/jailed/pids.max)"
# Every ferrovm process's uid: the parent outside stays root, the jailed VMM is nobody.
for st in /proc/[0-9]*/status; do
  grep -q '^Name:.*ferrovm' $st 2>/dev/null && echo "JAIL_PROC_UID $(grep '^Uid:' $st | tr -s '\t ' ' ')"
done
curl -s --max-time 10 --unix-socket /tmp/jailroot/run/api.sock -X PUT http://localhost/actions -d '{"action_type": "SendCtrlAltDel"}'
wait $jailpid
echo "JAIL_STATUS=$?"
echo "JAIL_CGROUP_LEFT=$(ls -d /sys/fs/cgroup/ferrovm/jailed 2>/dev/null | wc -l)"
cat /tmp/jail-out
echo "END jail"
echo "BEGIN jail-oom"
timeout -s KILL 90 $RUN --kernel $L2/bzImage --cmdline "$CMD ferrovm.test=fill" $JAIL --id oom \
  --cgroup memory.max=96M </dev/null >/tmp/oom-out 2>&1
echo "JAIL_OOM_STATUS=$?"
cat /tmp/oom-out
echo "END jail-oom"
echo "SCENARIOS-DONE"
