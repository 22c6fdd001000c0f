# Snapshot scenarios (tests/linux_snapshot.rs) for a Linux guest with a disk and a NIC,
# run where /dev/kvm has hardware virtualization: in the nested testbed's L1 (whose job
# script has loaded tun and friends), or directly on such a host as root. Environment:
#   FERROVM  the ferrovm binary;   L2  directory with vmlinux and snap-initrd.cpio;
#   IP       iproute2's ip (busybox sh would run its own applet for a bare `ip`);
#   CURL     curl (the API);       SNAP_SCENARIOS  which to run (default: all, in order).
# The guest (linux/snap-l2-init.sh) counts and writes a record per count to its disk.
# Output, for the test to parse:
#   FACT <key> <value...>          what L1 saw (keys are <scenario>.<what>);
#   VM-BEGIN <file> ... VM-END <file>  a VMM's stdout (<name>.out: the guest console) or
#                                      stderr (<name>.err: ferrovm's messages);
#   SNAP-SCENARIOS-DONE            at the end.
trap "" PIPE
# mitigations=off: see testbed::guest::NESTED_GUEST_ARGS (QEMU TCG mis-runs the
# kernel's return thunks now and then).
CMD="console=ttyS0 panic=-1 pci=off quiet mitigations=off"
W=/tmp/snap
VM_TIMEOUT=150
MEM=256M
NET="snap.ip=10.0.9.2/24 snap.peer=10.0.9.1"
export FERROVM_LOG=${FERROVM_LOG:-info}
rm -rf $W
mkdir -p $W

now() { cut -d' ' -f1 /proc/uptime; }
fact() { k=$1; shift; echo "FACT $k $*"; }
# req SOCK METHOD PATH BODY: the answer's body, then " HTTP=<code> T=<seconds>", one line.
req() {
  $CURL -s --max-time 60 --unix-socket "$1" -X "$2" -H 'Content-Type: application/json' \
    -d "$4" -w ' HTTP=%{http_code} T=%{time_total}' "http://localhost$3" | tr '\n' ' '
  echo
}
get() { $CURL -s --max-time 20 --unix-socket "$1" "http://localhost$2" | tr '\n' ' '; echo; }
wait_sock() { n=0; while [ ! -S "$1" ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done; }

# launch NAME [--ns SETUP] ARGS...: `ferrovm ARGS` in the background, stdout (the guest
# console) in $W/NAME.out, stderr in $W/NAME.err, its pid in $W/NAME.pid and that of its
# `timeout` in $W/NAME.tpid. With --ns it runs in private mount and network namespaces
# after the shell commands SETUP (which may bind-mount files and make taps there).
launch() {
  name=$1
  shift
  setup=
  if [ "$1" = --ns ]; then setup=$2; shift 2; fi
  rm -f $W/$name.pid
  if [ -n "$setup" ]; then
    # shellcheck disable=SC2016
    timeout -s KILL $VM_TIMEOUT unshare -m -n --propagation private \
      sh -c "$setup"' || exit 99; echo $$ >"$0"; exec "$@"' $W/$name.pid "$FERROVM" "$@" \
      </dev/null >$W/$name.out 2>$W/$name.err &
  else
    # shellcheck disable=SC2016
    timeout -s KILL $VM_TIMEOUT sh -c 'echo $$ >"$0"; exec "$@"' $W/$name.pid "$FERROVM" "$@" \
      </dev/null >$W/$name.out 2>$W/$name.err &
  fi
  echo $! >$W/$name.tpid
  n=0
  while [ ! -s $W/$name.pid ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
}
pid() { cat $W/$1.pid 2>/dev/null; }
alive() { kill -0 "$(pid $1)" 2>/dev/null; }
# stop NAME: kill -9 (if still running), then FACT NAME.rc (137: it was running).
stop() {
  kill -9 "$(pid $1)" 2>/dev/null
  wait "$(cat $W/$1.tpid)"
  fact "vm.$1.rc" $?
}
# dump NAME: the VMM's stdout and stderr.
dump() {
  for stream in out err; do
    echo "VM-BEGIN $1.$stream"
    cat $W/$1.$stream 2>/dev/null
    echo "VM-END $1.$stream"
  done
}
last_count() { grep -o '^COUNT [0-9]*' $W/$1.out | tail -n 1 | cut -d' ' -f2; }
# wait_count NAME N [SECONDS]: until the guest printed COUNT >= N (0), or the VMM ended or
# time ran out (1).
wait_count() {
  n=0 limit=$((${3:-60} * 10))
  while :; do
    c=$(last_count $1)
    [ -n "$c" ] && [ "$c" -ge "$2" ] && return 0
    if ! alive $1; then
      fact "wait.$1" "the VMM ended before COUNT $2 (last ${c:-none})"
      return 1
    fi
    if [ $n -ge $limit ]; then
      fact "wait.$1" "no COUNT $2 within ${3:-60} s (last ${c:-none})"
      return 1
    fi
    sleep 0.1
    n=$((n + 1))
  done
}
# wait_grep NAME PATTERN [SECONDS]
wait_grep() {
  n=0 limit=$((${3:-60} * 10))
  while ! grep -q "$2" $W/$1.out; do
    alive $1 || return 1
    [ $n -ge $limit ] && return 1
    sleep 0.1
    n=$((n + 1))
  done
}
# records IMG: the numbers of the records in sectors 1.. of IMG, in order.
records() {
  dd if="$1" bs=512 skip=1 count=4000 2>/dev/null | tr -d '\0' | sed 's/^REC 0*//' | tr '\n' ' '
}
mkdisk() { dd if=/dev/zero of="$1" bs=1M count=8 2>/dev/null; }
blocks() { stat -c '%s %b' "$1"; }

# full: boot with a disk and a NIC, count to 5, pause, snapshot, kill -9; a new process
# restores and resumes it (run --restore); the count, the disk and the network go on.
sc_full() {
  $IP link del tapS 2>/dev/null
  $IP tuntap add tapS mode tap
  $IP addr add 10.0.9.1/24 dev tapS
  $IP link set tapS up
  mkdisk $W/disk.img
  launch main run --kernel $L2/vmlinux --initrd $L2/snap-initrd.cpio --mem $MEM \
    --cmdline "$CMD $NET" --drive path=$W/disk.img,format=raw,id=disk \
    --net tap=tapS,mac=02:00:00:00:09:02,id=net0 --api-sock $W/main.sock
  if ! wait_count main 5 120; then
    fact full.error "the guest never counted to 5"
    stop main
    return
  fi
  wait_grep main 'net=0' 20
  ping -c 2 -W 5 10.0.9.2 >/dev/null 2>&1
  fact full.l1_ping_before $?
  # A plain pause of 2 s first (the guest's kernel log after it tells a pause's effects
  # from a restore's).
  fact full.pause0 "$($FERROVM ctl --api-sock $W/main.sock pause 2>&1) rc=$? at=$(now)"
  sleep 2
  fact full.resume0 "$($FERROVM ctl --api-sock $W/main.sock resume 2>&1) rc=$? at=$(now)"
  wait_count main $(($(last_count main) + 3)) 30
  # Pause and snapshot at once.
  t0=$(now)
  fact full.pause "$($FERROVM ctl --api-sock $W/main.sock pause 2>&1) rc=$? at=$t0"
  t1=$(now)
  out=$($FERROVM ctl --api-sock $W/main.sock snapshot $W/full.snap $W/full.mem 2>&1)
  fact full.snapshot "rc=$? secs=$t1-$(now) $out"
  sleep 0.5
  fact full.last_before "$(last_count main)"
  sleep 0.5
  fact full.last_at_kill "$(last_count main)"
  stop main
  cp $W/disk.img $W/disk-at-snap.img
  fact full.mem_file "$(blocks $W/full.mem)"
  fact full.state_file "$(blocks $W/full.snap)"
  fact full.info "$($FERROVM snapshot info $W/full.snap 2>&1 | tr '\n' '|')"
  fact full.restore_start "$(now)"
  launch full-restored run --restore $W/full.snap --mem-file $W/full.mem --resume
  last=$(fact_last)
  wait_count full-restored $((last + 10)) 60
  fact full.reached "$(last_count full-restored)"
  ping -c 2 -W 5 10.0.9.2 >/dev/null 2>&1
  fact full.l1_ping_after $?
  stop full-restored
  fact full.disk_records "$(records $W/disk.img)"
  dump main
  dump full-restored
}
fact_last() { grep -o '^COUNT [0-9]*' $W/main.out | tail -n 1 | cut -d' ' -f2; }

# clones: two restores of the full snapshot at once, each with its own copy of the disk
# (bind-mounted over the saved path in a private mount namespace; ferrovm cannot point a
# restored drive elsewhere at load time). clone1 shares L1's network (tapS); clone2 runs
# in its own network namespace on a tap of another name (network_overrides) with the
# same address and MAC. Then clone3, alone: restored paused, its drive pointed at its
# own copy with PATCH /drives, resumed.
sc_clones() {
  if [ ! -f $W/full.snap ] || [ ! -f $W/disk-at-snap.img ]; then
    fact clones.error "no snapshot from the full scenario"
    return
  fi
  last=$(fact_last)
  fact clones.disk_sum_before "$(sha256sum <$W/disk.img)"
  cp $W/disk-at-snap.img $W/clone1.img
  cp $W/disk-at-snap.img $W/clone2.img
  # clone2's tap gets tapS's MAC: the guest's ARP cache holds it.
  mac=$(cat /sys/class/net/tapS/address)
  rm -f $W/clone1.sock $W/clone2.sock
  ns1="mount --bind $W/clone1.img $W/disk.img"
  ns2="mount --bind $W/clone2.img $W/disk.img && $IP tuntap add tapc2 mode tap && $IP link set tapc2 address $mac && $IP addr add 10.0.9.1/24 dev tapc2 && $IP link set tapc2 up"
  # clone1: a mount namespace only (its tap is L1's tapS).
  rm -f $W/clone1.pid
  # shellcheck disable=SC2016
  timeout -s KILL $VM_TIMEOUT unshare -m --propagation private \
    sh -c "$ns1"' || exit 99; echo $$ >"$0"; exec "$@"' $W/clone1.pid "$FERROVM" run --api-sock $W/clone1.sock \
    </dev/null >$W/clone1.out 2>$W/clone1.err &
  echo $! >$W/clone1.tpid
  launch clone2 --ns "$ns2" run --api-sock $W/clone2.sock
  wait_sock $W/clone1.sock
  wait_sock $W/clone2.sock
  fact clones.load1 "$($FERROVM ctl --api-sock $W/clone1.sock restore --resume $W/full.snap $W/full.mem 2>&1) rc=$?"
  fact clones.load2 "$(req $W/clone2.sock PUT /snapshot/load "{\"snapshot_path\": \"$W/full.snap\", \"mem_backend\": {\"backend_type\": \"File\", \"backend_path\": \"$W/full.mem\"}, \"resume_vm\": true, \"network_overrides\": [{\"iface_id\": \"net0\", \"host_dev_name\": \"tapc2\"}]}")"
  wait_count clone1 $((last + 8)) 60
  wait_count clone2 $((last + 8)) 60
  fact clones.both_alive "$(alive clone1 && echo 1 || echo 0) $(alive clone2 && echo 1 || echo 0)"
  ping -c 2 -W 5 10.0.9.2 >/dev/null 2>&1
  fact clones.l1_ping1 $?
  nsenter -t "$(pid clone2)" -n ping -c 2 -W 5 10.0.9.2 >/dev/null 2>&1
  fact clones.l1_ping2 $?
  fact clones.reached "$(last_count clone1) $(last_count clone2)"
  stop clone1
  stop clone2
  fact clones.records1 "$(records $W/clone1.img)"
  fact clones.records2 "$(records $W/clone2.img)"
  # clone3: the other way to give a clone its own disk: restore paused, point the drive
  # at a copy (PATCH /drives), resume.
  cp $W/disk-at-snap.img $W/clone3.img
  launch clone3 run --api-sock $W/clone3.sock
  wait_sock $W/clone3.sock
  fact clones.load3 "$($FERROVM ctl --api-sock $W/clone3.sock restore $W/full.snap $W/full.mem 2>&1) rc=$?"
  fact clones.patch3 "$(req $W/clone3.sock PATCH /drives/disk "{\"drive_id\": \"disk\", \"path_on_host\": \"$W/clone3.img\"}")"
  fact clones.resume3 "$($FERROVM ctl --api-sock $W/clone3.sock resume 2>&1) rc=$?"
  wait_count clone3 $((last + 8)) 60
  stop clone3
  fact clones.records3 "$(records $W/clone3.img)"
  fact clones.disk_sum_after "$(sha256sum <$W/disk.img)"
  dump clone1
  dump clone2
  dump clone3
}

# diff: boot over the API with track_dirty_pages; Full at t1, resume, more counting; at t2
# a Diff and a Full; merge the diff onto (a copy of) t1's memory file: it must equal t2's
# full memory file, and restoring it must continue exactly where the full t2 one does.
sc_diff() {
  mkdisk $W/ddisk.img
  launch diff run --api-sock $W/diff.sock
  s=$W/diff.sock
  wait_sock $W/diff.sock
  fact diff.machine "$(req $s PUT /machine-config '{"vcpu_count": 1, "mem_size_mib": 256, "track_dirty_pages": true}')"
  fact diff.boot "$(req $s PUT /boot-source "{\"kernel_image_path\": \"$L2/vmlinux\", \"initrd_path\": \"$L2/snap-initrd.cpio\", \"boot_args\": \"$CMD\"}")"
  fact diff.drive "$(req $s PUT /drives/disk "{\"drive_id\": \"disk\", \"path_on_host\": \"$W/ddisk.img\", \"is_root_device\": false, \"is_read_only\": false}")"
  fact diff.start "$(req $s PUT /actions '{"action_type": "InstanceStart"}')"
  if ! wait_count diff 5 120; then
    fact diff.error "the guest never counted to 5"
    stop diff
    dump diff
    return
  fi
  fact diff.pause1 "$(req $s PATCH /vm '{"state": "Paused"}')"
  fact diff.t1 "$(last_count diff)"
  fact diff.create_t1 "$(req $s PUT /snapshot/create "{\"snapshot_type\": \"Full\", \"snapshot_path\": \"$W/t1.snap\", \"mem_file_path\": \"$W/t1.mem\"}")"
  fact diff.resume1 "$(req $s PATCH /vm '{"state": "Resumed"}')"
  t1=$(last_count diff)
  wait_count diff $((t1 + 8)) 60
  fact diff.pause2 "$(req $s PATCH /vm '{"state": "Paused"}')"
  sleep 0.5
  fact diff.t2 "$(last_count diff)"
  fact diff.create_t2_diff "$(req $s PUT /snapshot/create "{\"snapshot_type\": \"Diff\", \"snapshot_path\": \"$W/t2d.snap\", \"mem_file_path\": \"$W/t2d.mem\"}")"
  fact diff.create_t2_full "$(req $s PUT /snapshot/create "{\"snapshot_type\": \"Full\", \"snapshot_path\": \"$W/t2f.snap\", \"mem_file_path\": \"$W/t2f.mem\"}")"
  t2=$(last_count diff)
  stop diff
  cp $W/ddisk.img $W/ddisk-at-t2.img
  fact diff.files "t1=$(blocks $W/t1.mem) t2d=$(blocks $W/t2d.mem) t2f=$(blocks $W/t2f.mem)"
  fact diff.info_t2d "$($FERROVM snapshot info --json $W/t2d.snap 2>&1 | tr -d '\n ')"
  cp $W/t1.mem $W/merged.mem
  fact diff.merge "$($FERROVM snapshot merge $W/merged.mem $W/t2d.mem 2>&1) rc=$?"
  cmp -s $W/merged.mem $W/t2f.mem
  rc=$?
  fact diff.cmp $rc
  if [ $rc != 0 ]; then
    # The 4 KiB pages where they differ: how many, and the first 40 (page numbers).
    cmp -l $W/merged.mem $W/t2f.mem 2>/dev/null | head -n 200000 | awk '{ print int(($1 - 1) / 4096) }' | uniq >$W/cmp-pages
    fact diff.cmp_pages "$(wc -l <$W/cmp-pages) $(head -n 40 $W/cmp-pages | tr '\n' ' ')"
  fi
  # Restores, one at a time, each from the disk as it was at t2.
  for r in "merged-diffstate:$W/t2d.snap:$W/merged.mem" "merged:$W/t2f.snap:$W/merged.mem" "full-t2:$W/t2f.snap:$W/t2f.mem"; do
    name=${r%%:*}
    rest=${r#*:}
    cp $W/ddisk-at-t2.img $W/ddisk.img
    launch "$name" run --restore "${rest%%:*}" --mem-file "${rest#*:}" --resume
    wait_count "$name" $((t2 + 6)) 45
    fact "diff.$name.reached" "$(last_count $name)"
    stop "$name"
    fact "diff.$name.records" "$(records $W/ddisk.img)"
    dump "$name"
  done
  dump diff
  rm -f $W/t1.mem $W/t2d.mem $W/merged.mem
}

# bad: a truncated state file and a memory file of the wrong size, on the command line and
# over the API; refused before anything runs. Then the same process loads the good files.
sc_bad() {
  if [ ! -f $W/full.snap ]; then
    fact bad.error "no snapshot from the full scenario"
    return
  fi
  size=$(stat -c %s $W/full.snap)
  head -c $((size - 100)) $W/full.snap >$W/trunc.snap
  dd if=$W/full.mem of=$W/short.mem bs=1M count=16 2>/dev/null
  for c in "trunc:$W/trunc.snap:$W/full.mem" "short:$W/full.snap:$W/short.mem"; do
    name=${c%%:*}
    rest=${c#*:}
    t0=$(now)
    # At the default log level (the scenarios export FERROVM_LOG=info): what a user sees.
    FERROVM_LOG=warn timeout -s KILL 60 $FERROVM run --restore "${rest%%:*}" --mem-file "${rest#*:}" --resume \
      </dev/null >$W/bad-$name.out 2>$W/bad-$name.err
    fact "bad.$name" "rc=$? secs=$t0-$(now) stdout_bytes=$(wc -c <$W/bad-$name.out)"
    dump "bad-$name"
  done
  cp $W/disk-at-snap.img $W/disk.img
  launch bad-api run --api-sock $W/bad.sock
  wait_sock $W/bad.sock
  fact bad.api_trunc "$(req $W/bad.sock PUT /snapshot/load "{\"snapshot_path\": \"$W/trunc.snap\", \"mem_backend\": {\"backend_type\": \"File\", \"backend_path\": \"$W/full.mem\"}, \"resume_vm\": true}")"
  fact bad.api_short "$(req $W/bad.sock PUT /snapshot/load "{\"snapshot_path\": \"$W/full.snap\", \"mem_backend\": {\"backend_type\": \"File\", \"backend_path\": \"$W/short.mem\"}, \"resume_vm\": true}")"
  fact bad.api_info "$(get $W/bad.sock /)"
  fact bad.api_stdout_bytes "$(wc -c <$W/bad-api.out)"
  fact bad.api_good "$(req $W/bad.sock PUT /snapshot/load "{\"snapshot_path\": \"$W/full.snap\", \"mem_backend\": {\"backend_type\": \"File\", \"backend_path\": \"$W/full.mem\"}, \"resume_vm\": true}")"
  last=$(fact_last)
  wait_count bad-api $((last + 3)) 45
  fact bad.api_reached "$(last_count bad-api)"
  stop bad-api
  dump bad-api
}

start=$(now)
for scenario in ${SNAP_SCENARIOS:-full clones diff bad}; do
  fact "$scenario.begin" "$(now)"
  sc_$scenario
  fact "$scenario.end" "$(now)"
done
fact all.secs "$start-$(now)"
echo "SNAP-SCENARIOS-DONE"
