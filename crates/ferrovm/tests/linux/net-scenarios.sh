# Networking scenarios (tests/linux_net.rs), run where /dev/kvm has hardware
# virtualization: in the nested testbed's L1 (whose job script has loaded tun, vhost-net
# and dummy, and routed dummy0), or directly on such a host as root. Environment:
#   FERROVM  the ferrovm binary;   L2  directory with vmlinux and net-initrd.cpio;
#   IP       iproute2's ip (busybox sh would run its own applet for a bare `ip`);
#   CURL     curl (ferrovm's API, for the per-device counters);
#   NET_VMM  ferrovm (the default) or qemu: the same scenarios under QEMU microvm, to
#            check this harness itself (QEMU has no rate limits, no API and no per-queue
#            counters: those checks fail for it);
#   NET_SCENARIOS  the scenarios to run (default: all, in the order below);
#   NET_VMM_ARGS   more ferrovm run options (e.g. while debugging).
# One guest (two vCPUs) runs every scenario in turn, each on a NIC of its own (scenario
# number N: MAC 02:00:00:00:0N:02; on a tap, the guest at 10.0.N.2/24 and L1 at
# 10.0.N.1; see linux/net-l2-init.sh). Per scenario: pre_NAME prepares L1 before the VMM
# starts, drive_NAME plays L1's part while the guest runs that scenario, post_NAME looks
# at what is left once the VMM has exited. Each scenario's report: BEGIN <name>, the
# guest's lines of its section ("G:KEY=VALUE"), what L1 saw ("L1:KEY=VALUE"), END <name>,
# and RESULT <name> status=<VMM exit status>; the whole VMM output follows as "vm".
trap "" PIPE
NET_VMM=${NET_VMM:-ferrovm}
# mitigations=off: see testbed::guest::NESTED_GUEST_ARGS (QEMU TCG mis-runs the
# kernel's return thunks now and then).
CMD="console=ttyS0 panic=-1 pci=off quiet mitigations=off"
VM_TIMEOUT=300
BLOB=/tmp/net-blob
XFER_BYTES=67108864
MQ_BYTES=4194304
RATE=2000000
SERVERS=""

now() { cut -d' ' -f1 /proc/uptime; }
note() { echo "L1:$*" >>"$L1OUT"; }
# progress WHAT: a line on the console at once (the reports come at the end).
progress() { echo "NET-PROGRESS $name $(now) $*"; }
# utime + stime of process $1 (all its threads), in clock ticks (USER_HZ, 100 a second).
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
# serve COMMAND...: a background L1 server, killed after the VMM exits.
serve() { "$@" 2>>"$L1OUT" & SERVERS="$SERVERS $!"; }

nic_of() {
  case $1 in tap) echo 1 ;; vhost) echo 2 ;; mq) echo 3 ;; user) echo 4 ;; rate) echo 5 ;; flood) echo 6 ;; esac
}
mac_of() { echo "02:00:00:00:0$(nic_of "$1"):02"; }
sub_of() { echo "10.0.$(nic_of "$1")"; }
# The ferrovm --net specification of scenario $1.
spec_of() {
  m=$(mac_of "$1")
  case $1 in
    tap) echo "tap=tapn1,mac=$m" ;;
    vhost) echo "tap=tapn2,mac=$m,vhost=on" ;;
    mq) echo "tap=tapn3,mac=$m,queues=2" ;;
    user) echo "user,mac=$m,hostfwd=tcp::18080-:8000,hostfwd=tcp::17000-:7000" ;;
    rate) echo "tap=tapn5,mac=$m,tx_bw=$RATE,rx_bw=$RATE" ;;
    flood) echo "tap=tapn6,mac=$m" ;;
  esac
}

# qemu_net INDEX SPEC: QEMU's -netdev/-device arguments for a ferrovm --net SPEC.
qemu_net() {
  i=$1 tap="" mac="" q=1 vhost=off fwd=""
  for kv in $(echo "$2" | tr ',' ' '); do
    case "$kv" in
      tap=*) tap=${kv#tap=} ;;
      mac=*) mac=",mac=${kv#mac=}" ;;
      queues=*) q=${kv#queues=} ;;
      vhost=*) vhost=${kv#vhost=} ;;
      hostfwd=tcp::*) p=${kv#hostfwd=tcp::}; fwd="$fwd -t ${p%%-:*}:${p##*-:}" ;;
    esac
  done
  if [ -n "$tap" ]; then
    mq=""
    [ "$q" -gt 1 ] && mq=",mq=on"
    echo "-netdev tap,id=n$i,ifname=$tap,script=no,downscript=no,vhost=$vhost,queues=$q -device virtio-net-device,netdev=n$i$mq$mac"
  else
    rm -f /tmp/passt-$i.sock
    $VM_PREFIX passt -f -1 -s /tmp/passt-$i.sock $fwd >/tmp/passt-$i.log 2>&1 &
    n=0
    while [ ! -S /tmp/passt-$i.sock ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
    echo "-netdev stream,id=n$i,server=off,addr.type=unix,addr.path=/tmp/passt-$i.sock -device virtio-net-device,netdev=n$i$mac"
  fi
}

# passt sandboxes itself in namespaces of its own and pivot_root, which fails where / is
# the initramfs's rootfs (L1's case: "pivot_root: Invalid argument; Failed to sandbox
# process"); a chroot does not do (no user namespace from a chroot). There, as
# switch_root does, the VMM that starts passt runs in a mount namespace whose / is a
# tmpfs moved over the rootfs, holding bind mounts of L1's directories. passt_root
# prints the wrapper that does so (nothing where / is a real file system).
passt_root() {
  awk '$2 == "/" && $3 == "rootfs" { f = 1 } END { exit !f }' /proc/mounts || return 0
  mkdir -p /tmpfs-root
  cat >/tmp/in-tmpfs-root <<'WRAP'
#!/bin/sh
# in-tmpfs-root COMMAND...: runs COMMAND (same process) with / a tmpfs over the rootfs.
exec unshare -m sh -c '
  mount -t tmpfs tmpfs-root /tmpfs-root || exit 125
  for d in bin sbin usr lib lib64 etc l2 tmp dev proc sys; do
    [ -d /$d ] && mkdir -p /tmpfs-root/$d && mount -o bind /$d /tmpfs-root/$d
  done
  for f in $FERROVM; do [ -f "$f" ] && touch /tmpfs-root$f && mount -o bind $f /tmpfs-root$f; done
  cd /tmpfs-root && mount -o move . / && exec chroot . "$@"' in-tmpfs-root "$@"
WRAP
  chmod 755 /tmp/in-tmpfs-root
  echo /tmp/in-tmpfs-root
}

# vm MEM_MIB CPUS EXTRA_CMDLINE NETSPEC...: starts the VMM in the background (its output
# in $OUT, the process $VMPID, its `timeout` $TPID). ferrovm gets an API socket at $API.
vm() {
  mem=$1 cpus=$2 extra=$3
  shift 3
  OUT=/tmp/out-vm API=/tmp/api-net.sock
  : >"$OUT"
  rm -f /tmp/vm.pid "$API"
  cmdline="$CMD $extra"
  if [ "$NET_VMM" = qemu ]; then
    args="" i=0
    for spec in "$@"; do args="$args $(qemu_net $i "$spec")"; i=$((i + 1)); done
    # shellcheck disable=SC2086
    timeout -s KILL $VM_TIMEOUT sh -c 'echo $$ >/tmp/vm.pid; exec "$@"' vm $VM_PREFIX \
      qemu-system-x86_64 -M microvm -accel kvm -cpu host -m "$mem" -smp "$cpus" -nodefaults \
      -no-user-config -nographic -no-reboot -serial stdio -kernel "$L2/vmlinux" \
      -initrd "$L2/net-initrd.cpio" -append "$cmdline" $args </dev/null >"$OUT" 2>&1 &
  else
    args=""
    for spec in "$@"; do args="$args --net $spec"; done
    # shellcheck disable=SC2086
    timeout -s KILL $VM_TIMEOUT sh -c 'echo $$ >/tmp/vm.pid; exec "$@"' vm $VM_PREFIX \
      "$FERROVM" run --kernel "$L2/vmlinux" --initrd "$L2/net-initrd.cpio" --mem "${mem}M" \
      --cpus "$cpus" --api-sock "$API" --cmdline "$cmdline" $args $NET_VMM_ARGS \
      </dev/null >"$OUT" 2>&1 &
  fi
  TPID=$!
  name=vm
  progress "started $NET_VMM"
  n=0
  while [ ! -s /tmp/vm.pid ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
  VMPID=$(cat /tmp/vm.pid 2>/dev/null)
}

# wait_for PATTERN [SECONDS]: until the VMM's output has PATTERN (0) or it exited (1).
wait_for() {
  n=0 limit=$((${2:-90} * 10))
  while ! grep -q "$1" "$OUT"; do
    kill -0 $TPID 2>/dev/null || { progress "VMM exited before $1"; note "MISSING=$1"; return 1; }
    [ $n -ge $limit ] && { progress "no $1 within ${2:-90} s"; note "MISSING=$1"; return 1; }
    sleep 0.1
    n=$((n + 1))
  done
  progress "$1"
}
# mark WHAT [SECONDS]: wait_for the guest's progress marker WHAT of this scenario.
mark() { wait_for "G:MARK $name $1" "$2"; }

# go HOST [PORT]: tells the guest (waiting in wait_l1) to go on.
go() {
  echo "go-$(now)" | timeout 30 socat -u - TCP:"$1":"${2:-7000}",retry=40,interval=0.5 2>>"$L1OUT"
  note "GO_RC=$?"
}

# exits_json: ferrovm's GET /vm/exits (with the per-device counters) as a note.
exits_json() {
  [ "$NET_VMM" = ferrovm ] || return 0
  $CURL -s --max-time 20 --unix-socket "$API" http://localhost/vm/exits >/tmp/exits.json 2>&1
  note "EXITS_JSON=$(tr -d '\n' </tmp/exits.json)"
}

# tap_up NAME SUBNET: a tap made by L1, with SUBNET.1/24.
tap_up() {
  $IP link del "$1" 2>/dev/null
  $IP tuntap add "$1" mode tap || note "TAP_ADD_FAILED"
  $IP addr add "$2.1/24" dev "$1"
  $IP link set "$1" up
}

# The same 64 MiB each way through a tap L1 made (tapnN, ports 6N02 down and 6N01 up;
# iperf3's server has 5201), checksummed on both ends.
pre_xfer() {
  n=$(nic_of "$name")
  tap_up "tapn$n" "$(sub_of "$name")"
  rm -f "/tmp/up-$name"
  serve socat -b 262144 -u OPEN:$BLOB TCP-LISTEN:6${n}02,reuseaddr
  serve socat -b 262144 -u TCP-LISTEN:6${n}01,reuseaddr CREATE:/tmp/up-$name
}
drive_xfer() {
  sub=$(sub_of "$name")
  mark net-up || return
  ping -c 3 -W 5 "$sub.2" >/dev/null 2>&1
  note "PING_RC=$?"
  go "$sub.2"
  mark sent 200 || return
  # Everything the guest sent has arrived before its counters are read.
  n=0
  while [ "$(wc -c <"/tmp/up-$name" 2>/dev/null)" != $XFER_BYTES ] && [ $n -lt 300 ]; do sleep 0.1; n=$((n + 1)); done
  note "VHOST_NET_FDS=$(ls -l /proc/$VMPID/fd 2>/dev/null | grep -c /dev/vhost-net)"
  note "VHOST_THREADS=$(cat /proc/[0-9]*/comm 2>/dev/null | grep -c '^vhost-')"
  exits_json
}
post_xfer() {
  tap=tapn$(nic_of "$name")
  note "UP_BYTES=$(wc -c <"/tmp/up-$name" 2>/dev/null)"
  note "UP_SUM=$(sha256sum "/tmp/up-$name" 2>/dev/null | cut -d' ' -f1)"
  note "TAP_STATS=$($IP -s -o link show "$tap" 2>&1 | tr -s ' \\' ' ')"
  $IP link del "$tap" 2>/dev/null
  rm -f "/tmp/up-$name"
}
pre_tap() { pre_xfer; }
drive_tap() { drive_xfer; }
post_tap() { post_xfer; }
pre_vhost() { pre_xfer; }
drive_vhost() { drive_xfer; }
post_vhost() { post_xfer; }

# Two queue pairs on a tap the VMM creates (and removes): TCP flows each way, then a UDP
# flow sent from each CPU (XPS: CPU i transmits on queue i) and echoed by L1.
pre_mq() {
  $IP link del tapn3 2>/dev/null
  rm -f /tmp/mq-up1 /tmp/mq-up2
  for c in 1 2; do
    serve socat -u TCP-LISTEN:501$c,reuseaddr CREATE:/tmp/mq-up$c
    serve socat -u OPEN:/dev/zero,readbytes=$MQ_BYTES TCP-LISTEN:502$c,reuseaddr
    # UDP echo: tun sends a flow's replies to the queue the guest sent it on.
    serve socat -b 1400 -T 15 UDP-LISTEN:503$c PIPE
  done
}
# Right after the VMM started (its tap exists before the guest runs).
start_mq() {
  tap=tapn3 sub=10.0.3
  n=0
  while [ ! -e /sys/class/net/$tap ] && [ $n -lt 300 ] && kill -0 $TPID 2>/dev/null; do sleep 0.1; n=$((n + 1)); done
  note "TAP_CREATED=$([ -e /sys/class/net/$tap ] && echo 1 || echo 0)"
  $IP addr add $sub.1/24 dev $tap
  $IP link set $tap up
}
drive_mq() {
  tap=tapn3 sub=10.0.3
  mark net-up || return
  note "L1_TAP_QUEUES=$(ls /sys/class/net/$tap/queues 2>/dev/null | tr '\n' ' ')"
  go $sub.2
  mark done 150 || return
  exits_json
  threads=""
  for t in /proc/$VMPID/task/*; do
    threads="$threads $(cat $t/comm 2>/dev/null)=$(awk '{ print $14 + $15 }' $t/stat 2>/dev/null)"
  done
  note "THREAD_TICKS=$threads"
  go $sub.2
}
post_mq() {
  note "MQ_UP_BYTES=$(wc -c </tmp/mq-up1 2>/dev/null) $(wc -c </tmp/mq-up2 2>/dev/null)"
  rm -f /tmp/mq-up1 /tmp/mq-up2
  n=0
  while [ -e /sys/class/net/tapn3 ] && [ $n -lt 30 ]; do sleep 0.1; n=$((n + 1)); done
  note "TAP_REMOVED=$([ -e /sys/class/net/tapn3 ] && echo 0 || echo 1)"
  $IP link del tapn3 2>/dev/null
}

# User networking: passt's DHCP, and a guest TCP server on a forwarded port.
pre_user() { :; }
drive_user() {
  mark ready 60 || return
  reply=""
  for i in 1 2 3; do
    reply=$(echo 42 | timeout 10 socat -t 5 - TCP:127.0.0.1:18080 2>>"$L1OUT")
    note "USER_TRY=$i rc=$? $(now)"
    [ -n "$reply" ] && break
    sleep 1
  done
  note "USER_REPLY=$reply"
  netstat -tn 2>/dev/null | sed 's/^/L1:NETSTAT /' >>"$L1OUT"
  go 127.0.0.1 17000
}
post_user() {
  [ "$NET_VMM" = qemu ] && sed 's/^/L1:PASST_LOG /' /tmp/passt-*.log >>"$L1OUT"
  [ -s /tmp/passt.strace ] && grep -v "epoll_wait(.*= 0$\|write(2, " /tmp/passt.strace | tail -n 300 | sed 's/^/L1:PASST_STRACE /' >>"$L1OUT"
  return 0
}

# Rate limits: 2 MB/s each way, measured by iperf3 in the guest.
pre_rate() { tap_up tapn5 10.0.5; }
drive_rate() {
  note "RATE_LIMIT=$RATE"
  mark net-up && go 10.0.5.2
}
post_rate() { $IP link del tapn5 2>/dev/null; }

# A guest that downs its link while L1 floods the tap: the VMM must not spin on it.
pre_flood() { tap_up tapn6 10.0.6; }
drive_flood() {
  tap=tapn6 sub=10.0.6
  mark net-up || return
  # The guest will not answer ARP with its link down: a permanent neighbour entry.
  $IP neigh replace $sub.2 lladdr "$(mac_of flood)" dev $tap nud permanent
  go $sub.2
  mark link-down 60 || return
  sleep 1
  c0=$(cpu_ticks $VMPID)
  sleep 4
  c1=$(cpu_ticks $VMPID)
  d0=$(cat /sys/class/net/$tap/statistics/tx_dropped)
  p0=$(cat /sys/class/net/$tap/statistics/tx_packets)
  socat -u -b 1400 OPEN:/dev/zero UDP-SENDTO:$sub.2:9 2>/dev/null &
  fl=$!
  sleep 5
  c2=$(cpu_ticks $VMPID)
  kill $fl
  d1=$(cat /sys/class/net/$tap/statistics/tx_dropped)
  p1=$(cat /sys/class/net/$tap/statistics/tx_packets)
  note "FLOOD_TICKS idle4s=$((c1 - c0)) flood5s=$((c2 - c1))"
  note "FLOOD_TAP dropped=$((d1 - d0)) delivered=$((p1 - p0))"
}
post_flood() { $IP link del tapn6 2>/dev/null; }

# With NET_KVM_TRACE=1, L1's KVM trace events (exits, injected exceptions and
# interrupts) are recorded while the VMM runs and their last lines printed after it
# ended, with L1's kernel log: what the guest did last when it died (a triple fault
# leaves no registers on SVM, which resets the vCPU).
kvm_trace_start() {
  [ "${NET_KVM_TRACE:-0}" = 1 ] || return 0
  T=/sys/kernel/tracing
  [ -d $T/events ] || mount -t tracefs nodev $T 2>/dev/null
  echo 16384 >$T/buffer_size_kb
  : >$T/trace
  for e in kvm_exit kvm_inj_exception kvm_inj_virq kvm_apic_accept_irq kvm_msi_set_irq \
    kvm_set_irq kvm_ioapic_set_irq kvm_pio kvm_mmio kvm_msr kvm_cr kvm_fpu kvm_hypercall; do
    [ -e $T/events/kvm/$e/enable ] && echo 1 >$T/events/kvm/$e/enable
  done
  echo 1 >$T/tracing_on
}
kvm_trace_dump() {
  [ "${NET_KVM_TRACE:-0}" = 1 ] || return 0
  echo 0 >$T/tracing_on
  echo "KVM-TRACE-BEGIN"
  grep -v '^#' $T/trace | tail -n 400
  echo "KVM-TRACE-END"
  dmesg | tail -n 30 | sed 's/^/L1-DMESG /'
}

# run_all: one VMM, every scenario; its exit status.
run_all() {
  SERVERS="" tests="" specs=""
  for name in $LIST; do
    L1OUT=/tmp/l1-$name
    : >"$L1OUT"
    pre_$name
    tests="$tests,$name:$(nic_of $name)"
    specs="$specs $(spec_of $name)"
  done
  VM_PREFIX=$(passt_root)
  export FERROVM_LOG=info # passt's messages come through ferrovm's log
  if [ -n "${NET_PASST_DEBUG:-}" ]; then
    # passt through FERROVM_PASST: under strace when L1 has it (the job adds it with the
    # same switch); with NET_PASST_DEBUG=1 also with --debug in place of --quiet.
    st="" dbg=""
    [ -x /usr/bin/strace ] && st="strace -f -tt -s 96 -o /tmp/passt.strace"
    [ "$NET_PASST_DEBUG" = 1 ] && dbg=--debug
    printf '#!/bin/sh\nfor a; do shift; [ "$a" = --quiet ] && [ -n "%s" ] && a=%s; set -- "$@" "$a"; done\nexec %s passt "$@"\n' "$dbg" "$dbg" "$st" >/tmp/passt-debug
    chmod 755 /tmp/passt-debug
    export FERROVM_PASST=/tmp/passt-debug
  fi
  kvm_trace_start
  # shellcheck disable=SC2086
  vm 512 2 "ferrovm.tests=${tests#,} net.bytes=$MQ_BYTES" $specs
  unset FERROVM_LOG
  for name in $LIST; do
    L1OUT=/tmp/l1-$name
    [ "$name" = mq ] && start_mq
  done
  i=0
  for name in $LIST; do
    L1OUT=/tmp/l1-$name
    note "VMM=$NET_VMM pid=$VMPID prefix=$VM_PREFIX spec=$(spec_of $name)"
    note "NET_DEVICE=net$i" # ferrovm names its devices in --net order
    i=$((i + 1))
    drive_$name
  done
  name=vm
  wait $TPID
  rc=$?
  progress "VMM exit $rc"
  kvm_trace_dump
  # shellcheck disable=SC2086
  kill $SERVERS 2>/dev/null
  for name in $LIST; do
    L1OUT=/tmp/l1-$name
    note "VMM_RC=$rc end=$(now)"
    post_$name
  done
  return $rc
}

t0=$(now)
echo "L1:THP=$(cat /sys/kernel/mm/transparent_hugepage/enabled)"
LIST=${NET_SCENARIOS:-tap vhost mq user rate flood}
dd if=/dev/urandom of=$BLOB bs=1M count=64 2>/dev/null
echo "L1:BLOB_SUM=$(sha256sum $BLOB | cut -d' ' -f1)"
echo "L1:BLOB_BYTES=$(wc -c <$BLOB)"
echo "L1:DEVICES tun=$([ -c /dev/net/tun ] && echo 1 || echo 0) vhost-net=$([ -c /dev/vhost-net ] && echo 1 || echo 0)"
iperf3 -s -D --pidfile /tmp/iperf3.pid >/dev/null 2>&1
# A heartbeat shows whether L1 itself still runs when a scenario seems stuck.
(while sleep 30; do echo "NET-HEARTBEAT $(now)"; done) &
heartbeat=$!
# Once more when the VMM was killed by its timeout (QEMU TCG's emulated SVM rarely stalls
# an L2 for good).
run_all
rc=$?
if [ $rc -eq 137 ]; then
  echo "RETRY (killed after $VM_TIMEOUT s); the first attempt's last lines:"
  tail -n 15 "$OUT"
  run_all
  rc=$?
fi
for s in $LIST; do
  echo "BEGIN $s"
  awk -v s="$s" '{ sub(/\r$/, "") } $0 == "G:SECTION " s { f = 1; next } $0 == "G:END " s { f = 0 } f' "$OUT"
  cat "/tmp/l1-$s"
  echo "END $s"
  echo "RESULT $s status=$rc"
done
[ -f /tmp/passt.strace ] && tail -n 40 /tmp/passt.strace | sed 's/^/L1:PASST_STRACE /'
echo "BEGIN vm"
cat "$OUT"
echo "END vm"
echo "RESULT vm status=$rc"
kill "$(cat /tmp/iperf3.pid 2>/dev/null)" $heartbeat 2>/dev/null
rm -f $BLOB
echo "L1:SCENARIOS_SECS=$t0-$(now)"
echo "NET-SCENARIOS-DONE"
