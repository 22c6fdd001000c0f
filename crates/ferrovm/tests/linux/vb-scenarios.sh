# virtio-vsock and virtio-balloon scenarios (tests/linux_vsock_balloon.rs), run where
# /dev/kvm has hardware virtualization: in the nested testbed's L1, or directly on such a
# host as root. Environment:
#   FERROVM  the ferrovm binary;   L2  directory with vmlinux and vb-initrd.cpio;
#   CURL     curl (the API);       socat in $PATH;
#   VB_VMM   ferrovm (the default) or firecracker ($FIRECRACKER): the same scenarios under
#            Firecracker, to check this harness itself.
# Three VMs, one after the other, each driven through its serial console (the guest is a
# command shell, linux/vb-l2-init.sh: "ID FUNCTION ARGS" in, "G:DONE ID rc=N" out):
#   vsock    --vsock cid=3,uds=/tmp/v.sock, 256 MiB: guest -> host listeners (a greeting,
#            4 MiB checksummed, 50 at once), host -> guest (32 MiB checksummed, 50 at once,
#            a port nobody listens on, a listener killed in mid-stream);
#   balloon  --balloon size=0,stats=1, 512 MiB: the guest touches its memory, the balloon
#            inflates to 256 MiB (the VMM's RSS), statistics, deflate;
#   fpr      configured over the API (PUT /balloon with free_page_reporting, PUT /vsock),
#            512 MiB: a greeting over vsock; 256 MiB written to a tmpfs file and deleted
#            (the VMM's RSS).
# Each prints BEGIN <name>, the VMM's output (guest lines "G:..."), L1's lines
# ("L1:KEY=VALUE"), END <name>, and RESULT <name> status=<VMM exit status>.
trap "" PIPE
VB_VMM=${VB_VMM:-ferrovm}
# mitigations=off: see testbed::guest::NESTED_GUEST_ARGS (QEMU TCG mis-runs the
# kernel's return thunks now and then).
CMD="console=ttyS0 reboot=k panic=-1 pci=off quiet mitigations=off vb.vmm=$VB_VMM"
VM_TIMEOUT=300
INITRD=$L2/vb-initrd.cpio

now() { cut -d' ' -f1 /proc/uptime; }
note() { echo "L1:$*" >>"$L1OUT"; }
rss() { awk '/^VmRSS:/ { print $2 }' "/proc/$VMPID/status" 2>/dev/null || echo 0; }
rss_anon() { awk '/^RssAnon:/ { print $2 }' "/proc/$VMPID/status" 2>/dev/null || echo 0; }
l1_avail() { awk '/^MemAvailable:/ { print $2 }' /proc/meminfo; }
# The guest's last MemTotal (kB), from its last "G:MEM" line.
guest_total() { grep 'G:MEM ' "$OUT" | tail -n 1 | sed -n 's/.*total=\([0-9]*\).*/\1/p'; }
timed_out() { [ "$1" -eq 124 ] || [ "$1" -eq 137 ] || [ "$1" -eq 143 ]; }

# launch NAME COMMAND...: starts the VMM in the background, its stdin a FIFO on fd 3
# (the guest's console input), its output in $OUT; $VMPID is the VMM, $TPID its job.
launch() {
  name=$1
  shift
  OUT=/tmp/out-$name L1OUT=/tmp/l1-$name STEP=0
  : >"$OUT"
  : >"$L1OUT"
  rm -f /tmp/vm.pid "/tmp/in-$name"
  mkfifo "/tmp/in-$name"
  timeout -s KILL $VM_TIMEOUT sh -c 'echo $$ >/tmp/vm.pid; exec "$@"' vm "$@" \
    <"/tmp/in-$name" >"$OUT" 2>&1 &
  TPID=$!
  exec 3>"/tmp/in-$name"
  n=0
  while [ ! -s /tmp/vm.pid ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
  VMPID=$(cat /tmp/vm.pid 2>/dev/null)
  note "VMM=$VB_VMM pid=$VMPID start=$(now)"
}

# wait_for PATTERN [SECONDS]: until the VMM's output has PATTERN (0) or it exited (1).
wait_for() {
  n=0 limit=$((${2:-90} * 10))
  while ! grep -q "$1" "$OUT"; do
    kill -0 $TPID 2>/dev/null || return 1
    [ $n -ge $limit ] && return 1
    sleep 0.1
    n=$((n + 1))
  done
}

# step SECONDS FUNCTION ARGS...: runs a guest function and waits for its G:DONE line.
step() {
  secs=$1
  shift
  STEP=$((STEP + 1))
  echo "$STEP $*" >&3
  n=0
  while ! grep -q "G:DONE $STEP " "$OUT"; do
    if ! kill -0 $TPID 2>/dev/null; then
      note "STEP_FAILED=$* (the VMM exited)"
      return 1
    fi
    if [ $n -ge $((secs * 10)) ]; then
      note "STEP_FAILED=$* (no answer in $secs s)"
      return 1
    fi
    sleep 0.1
    n=$((n + 1))
  done
}

# api KEY METHOD PATH [BODY]: one request to $SOCK; notes KEY_CODE= and KEY_JSON=.
api() {
  k=$1 m=$2 p=$3
  shift 3
  rm -f /tmp/api-body
  if [ $# -gt 0 ]; then
    code=$("$CURL" -s --max-time 20 --unix-socket "$SOCK" -o /tmp/api-body -w '%{http_code}' \
      -X "$m" -H 'Content-Type: application/json' "http://localhost$p" -d "$1")
  else
    code=$("$CURL" -s --max-time 20 --unix-socket "$SOCK" -o /tmp/api-body -w '%{http_code}' \
      -X "$m" "http://localhost$p")
  fi
  note "${k}_CODE=$code"
  note "${k}_JSON=$(tr -d '\n' </tmp/api-body 2>/dev/null)"
}

# wait_socket PATH: until PATH is a socket (at most 10 s).
wait_socket() {
  n=0
  while [ ! -S "$1" ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
}

# finish: powers the guest off, waits for the VMM, prints the VM's block.
finish() {
  echo "0 off" >&3 2>/dev/null
  n=0
  while kill -0 $TPID 2>/dev/null && [ $n -lt 300 ]; do sleep 0.1; n=$((n + 1)); done
  if kill -0 $TPID 2>/dev/null; then
    note "KILLED_AT_END=1"
    kill -9 $TPID
  fi
  wait $TPID
  rc=$?
  exec 3>&-
  note "VMM_RC=$rc end=$(now)"
  echo "BEGIN $name"
  cat "$OUT"
  cat "$L1OUT"
  echo "END $name"
  echo "RESULT $name status=$rc"
}

# fc_config FILE MEM_MIB TEST EXTRA_JSON: a Firecracker configuration like ferrovm's
# command lines below.
fc_config() {
  cat >"$1" <<CFG
{
  "boot-source": { "kernel_image_path": "$L2/vmlinux", "initrd_path": "$INITRD",
                   "boot_args": "$CMD ferrovm.test=$3" },
  "machine-config": { "vcpu_count": 1, "mem_size_mib": $2 },
  "drives": []$4
}
CFG
}

# ---------------------------------------------------------------------------------------
# vsock
VS=/tmp/v.sock
SOCK=/tmp/api-vsock.sock
rm -f $VS ${VS}_* $SOCK
# L1's listeners for the guest-initiated connections (<uds>_PORT).
# The barrier counts files with a glob (no process per poll: 50 handlers poll at once).
cat >/tmp/h50.sh <<'EOF'
read l
: >"/tmp/h50/$l"
n=0
while :; do
  set -- /tmp/h50/*
  { [ $# -ge 50 ] || [ $n -ge 240 ]; } && break
  sleep 0.25
  n=$((n + 1))
done
echo "re-$l n=$#"
EOF
rm -rf /tmp/h50
mkdir -p /tmp/h50
timeout 280 socat -d -d UNIX-LISTEN:${VS}_5001 SYSTEM:'read l; echo "$l" >/tmp/h-said; echo HOST-HELLO-42' 2>/tmp/h5001.err &
timeout 280 socat -d -d -u UNIX-LISTEN:${VS}_5002 CREATE:/tmp/up-got 2>/tmp/h5002.err &
UPPID=$!
timeout 280 socat -d -d UNIX-LISTEN:${VS}_5011,fork,backlog=128 EXEC:'sh /tmp/h50.sh' 2>/tmp/h5011.err &
H50PID=$!
for f in /tmp/h5001.err /tmp/h5002.err /tmp/h5011.err; do
  n=0
  while ! grep -q 'listening on' $f 2>/dev/null && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
done
dd if=/dev/urandom of=/tmp/blob bs=1M count=32 2>/dev/null
BLOB_SUM=$(sha256sum /tmp/blob | cut -d' ' -f1)
if [ "$VB_VMM" = firecracker ]; then
  fc_config /tmp/fc-vsock.json 256 vsock ", \"vsock\": { \"guest_cid\": 3, \"uds_path\": \"$VS\" }"
  launch vsock "$FIRECRACKER" --api-sock $SOCK --config-file /tmp/fc-vsock.json --level Error
else
  launch vsock "$FERROVM" run --kernel "$L2/vmlinux" --initrd "$INITRD" --mem 256M --cpus 1 \
    --no-rng --api-sock $SOCK --vsock cid=3,uds=$VS --cmdline "$CMD ferrovm.test=vsock"
fi
note "BLOB_SUM=$BLOB_SUM"
if wait_for G:SHELL-READY 120; then
  note "VSOCK_SOCKET=$([ -S $VS ] && echo 1 || echo 0)"
  # Guest -> L1.
  step 150 vs_guest
  n=0
  while kill -0 $UPPID 2>/dev/null && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
  note "UP_LISTENER_DONE=$(kill -0 $UPPID 2>/dev/null && echo 0 || echo 1)"
  note "UP_BYTES=$(wc -c </tmp/up-got 2>/dev/null || echo 0)"
  note "UP_SUM=$(sha256sum /tmp/up-got 2>/dev/null | cut -d' ' -f1)"
  note "HOST_HELLO_SAID=$(cat /tmp/h-said 2>/dev/null)"
  note "HOST50_SEEN=$(ls /tmp/h50 | wc -l)"
  kill $H50PID 2>/dev/null

  # L1 -> guest.
  step 30 vs_servers
  t0=$(now)
  rm -f /tmp/x.ok /tmp/x.sum
  timeout 120 socat UNIX-CONNECT:$VS \
    SYSTEM:'echo CONNECT 5000; read ok; echo "$ok" >/tmp/x.ok; cat /tmp/blob; read sum; echo "$sum" >/tmp/x.sum' \
    2>/tmp/x.err
  note "XFER_RC=$? secs=$t0-$(now)"
  note "XFER_OK=$(cat /tmp/x.ok 2>/dev/null)"
  note "XFER_SUM=$(cut -d' ' -f1 /tmp/x.sum 2>/dev/null)"
  head -n 3 /tmp/x.err | sed 's/^/L1:XFER_ERR /' >>"$L1OUT"

  # 50 at once, each sending its line right behind the CONNECT line.
  cat >/tmp/hc.sh <<'EOF'
printf 'CONNECT 5003\nh-%s\n' "$1"
read ok
echo "$ok" >/tmp/hc/$1.ok
read r
echo "$r" >/tmp/hc/$1
EOF
  rm -rf /tmp/hc
  mkdir -p /tmp/hc
  i=1 pids=""
  while [ $i -le 50 ]; do
    timeout 90 socat UNIX-CONNECT:$VS EXEC:"sh /tmp/hc.sh $i" 2>/tmp/hc/$i.err &
    pids="$pids $!"
    i=$((i + 1))
  done
  wait $pids
  ok=0
  for i in $(seq 50); do grep -q "^re-h-$i n=50" /tmp/hc/$i 2>/dev/null && ok=$((ok + 1)); done
  note "HOST50_OK=$ok"
  note "HOST50_PORTS=$(cat /tmp/hc/*.ok 2>/dev/null | grep '^OK [0-9]*$' | sort -u | wc -l)"
  note "HOST50_FIRST=$(cat /tmp/hc/1.ok 2>/dev/null) / $(cat /tmp/hc/1 2>/dev/null) / $(head -n 1 /tmp/hc/1.err)"
  # The first connection without an OK line, if any (one was seen once in 50: which?).
  for i in $(seq 50); do
    grep -q '^OK [0-9]*$' /tmp/hc/$i.ok 2>/dev/null && continue
    note "HOST50_NO_OK=$i ok=$(cat /tmp/hc/$i.ok 2>/dev/null) reply=$(cat /tmp/hc/$i 2>/dev/null) err=$(head -n 2 /tmp/hc/$i.err | tr '\n' ' ')"
    break
  done

  # A port nobody listens on: the socket closes without an OK line.
  rm -f /tmp/refused
  t0=$(now)
  timeout 20 socat UNIX-CONNECT:$VS SYSTEM:'echo CONNECT 5999; read ok; echo "got=$ok" >/tmp/refused' 2>/dev/null
  note "REFUSED_RC=$? secs=$t0-$(now)"
  note "REFUSED_GOT=$(cat /tmp/refused 2>/dev/null)"

  # A listener killed in mid-stream (the guest kills it once it has 4 MiB): L1's writer
  # must see its socket close.
  step 20 vs_killer
  rm -f /tmp/k.ok
  timeout 90 socat UNIX-CONNECT:$VS \
    SYSTEM:'echo CONNECT 5004; read ok; echo "$ok" >/tmp/k.ok; exec cat /dev/zero' 2>/tmp/k.err &
  KP=$!
  if wait_for G:KILLED 80; then
    tk=$(now)
    n=0
    while kill -0 $KP 2>/dev/null && [ $n -lt 300 ]; do sleep 0.1; n=$((n + 1)); done
    te=$(now)
    note "KILL_CLOSE_SECS=$(awk "BEGIN { print $te - $tk }")"
  else
    note "KILL_CLOSE_SECS=never (the guest did not kill its listener)"
  fi
  kill $KP 2>/dev/null
  wait $KP
  note "KILL_HOST_RC=$?"
  note "KILL_HOST_OK=$(cat /tmp/k.ok 2>/dev/null)"
  head -n 2 /tmp/k.err | sed 's/^/L1:KILL_ERR /' >>"$L1OUT"
  step 20 meminfo && note "ALIVE_AFTER_KILL=1"
  if [ "$VB_VMM" = ferrovm ]; then
    # The device's counters (GET /vm/exits), for the record.
    "$CURL" -s --max-time 20 --unix-socket $SOCK http://localhost/vm/exits |
      grep -o '"vsock":{[^}]*}' | sed 's/^/L1:VSOCK_COUNTERS=/' >>"$L1OUT"
  fi
else
  note "NO_SHELL=1"
fi
finish

# ---------------------------------------------------------------------------------------
# balloon: inflate, statistics, deflate
SOCK=/tmp/api-balloon.sock
rm -f $SOCK
if [ "$VB_VMM" = firecracker ]; then
  fc_config /tmp/fc-balloon.json 512 balloon \
    ', "balloon": { "amount_mib": 0, "deflate_on_oom": false, "stats_polling_interval_s": 1 }'
  launch balloon "$FIRECRACKER" --api-sock $SOCK --config-file /tmp/fc-balloon.json --level Error
else
  launch balloon "$FERROVM" run --kernel "$L2/vmlinux" --initrd "$INITRD" --mem 512M --cpus 1 \
    --no-rng --api-sock $SOCK --balloon size=0,stats=1 --cmdline "$CMD ferrovm.test=balloon"
fi
if wait_for G:SHELL-READY 120; then
  step 20 meminfo
  total0=$(guest_total)
  note "RSS_BOOT_KB=$(rss)"
  step 120 touch_mem 24
  sleep 2
  note "RSS_BEFORE_KB=$(rss) anon=$(rss_anon) l1_avail=$(l1_avail)"
  api GET_BALLOON_BEFORE GET /balloon
  api STATS_BEFORE GET /balloon/statistics
  t0=$(now)
  api INFLATE PATCH /balloon '{"amount_mib": 256}'
  # Until the guest's MemTotal is 256 MiB less (it gives inflated pages up), at most 90 s.
  n=0
  while step 20 meminfo && [ "$(guest_total)" -gt $((total0 - 256 * 1024 + 1024)) ] && [ $n -lt 90 ]; do
    sleep 1
    n=$((n + 1))
  done
  note "INFLATE_SECS=$(awk "BEGIN { print $(now) - $t0 }") guest_total=$total0->$(guest_total)"
  sleep 2
  note "RSS_AFTER_KB=$(rss) anon=$(rss_anon) l1_avail=$(l1_avail)"
  sleep 2
  api GET_BALLOON_AFTER GET /balloon
  api STATS_AFTER GET /balloon/statistics
  api STATS_INTERVAL PATCH /balloon/statistics '{"stats_polling_interval_s": 2}'
  if [ "$VB_VMM" = ferrovm ]; then
    # ferrovm's own client for the same requests.
    "$FERROVM" ctl --api-sock $SOCK --json balloon-stats >/tmp/ctl-stats 2>&1
    note "CTL_STATS_RC=$?"
    note "CTL_STATS_JSON=$(tr -d '\n' </tmp/ctl-stats)"
    "$FERROVM" ctl --api-sock $SOCK balloon 0 >/tmp/ctl-balloon 2>&1
    note "CTL_DEFLATE_RC=$? $(head -n 1 /tmp/ctl-balloon)"
  else
    api DEFLATE PATCH /balloon '{"amount_mib": 0}'
  fi
  n=0
  while step 20 meminfo && [ "$(guest_total)" -lt $((total0 - 1024)) ] && [ $n -lt 60 ]; do
    sleep 1
    n=$((n + 1))
  done
  note "DEFLATED_TOTAL=$total0->$(guest_total)"
  note "RSS_DEFLATED_KB=$(rss)"
else
  note "NO_SHELL=1"
fi
finish

# ---------------------------------------------------------------------------------------
# fpr: configured over the API; free page reporting, and a vsock device
SOCK=/tmp/api-fpr.sock
VS2=/tmp/v2.sock
rm -f $SOCK $VS2
if [ "$VB_VMM" = firecracker ]; then
  launch fpr "$FIRECRACKER" --api-sock $SOCK --level Error
else
  launch fpr "$FERROVM" run --api-sock $SOCK
fi
wait_socket $SOCK
api PUT_MACHINE PUT /machine-config '{"vcpu_count": 1, "mem_size_mib": 512}'
api PUT_BOOT PUT /boot-source "{\"kernel_image_path\": \"$L2/vmlinux\", \"initrd_path\": \"$INITRD\", \"boot_args\": \"$CMD ferrovm.test=fpr\"}"
api PUT_BALLOON PUT /balloon '{"amount_mib": 0, "deflate_on_oom": false, "stats_polling_interval_s": 0, "free_page_reporting": true}'
api PUT_VSOCK PUT /vsock "{\"guest_cid\": 5, \"uds_path\": \"$VS2\"}"
api START PUT /actions '{"action_type": "InstanceStart"}'
api GET_BALLOON GET /balloon
if wait_for G:SHELL-READY 120; then
  step 30 vs_servers
  rm -f /tmp/api-hello
  timeout 30 socat UNIX-CONNECT:$VS2 SYSTEM:'echo CONNECT 5006; read ok; read r; echo "$ok / $r" >/tmp/api-hello' 2>/dev/null
  note "API_VSOCK_HELLO=$(cat /tmp/api-hello 2>/dev/null)"
  # Let the guest report the memory it never touched, then fill 256 MiB and free it.
  sleep 5
  note "RSS_IDLE_KB=$(rss)"
  step 120 fill 256
  sleep 2
  r1=$(rss)
  note "RSS_FILLED_KB=$r1 anon=$(rss_anon) l1_avail=$(l1_avail)"
  step 30 unfill
  t0=$(now)
  n=0 trace=""
  while [ $n -lt 60 ]; do
    sleep 1
    r=$(rss)
    trace="$trace $r"
    [ $((r1 - r)) -ge $((240 * 1024)) ] && break
    n=$((n + 1))
  done
  note "FPR_TRACE_KB=$trace"
  note "RSS_FREED_KB=$(rss) anon=$(rss_anon) l1_avail=$(l1_avail) after=$(awk "BEGIN { print $(now) - $t0 }")s"
else
  note "NO_SHELL=1"
fi
finish
echo "VB-SCENARIOS-DONE"
