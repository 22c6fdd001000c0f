# Body of the L2 guest's /init for the vsock and balloon tests (tests/linux_vsock_balloon.rs;
# after proc, sys and devtmpfs are mounted; `poweroff -f` follows). The guest is a small
# command shell on its serial console: L1 (linux/vb-scenarios.sh) writes lines
# "ID FUNCTION ARGS..." to the VMM's stdin, the guest runs FUNCTION (one of those below)
# and prints "G:DONE ID rc=N". Results are "G:KEY=VALUE" lines. socat is in the
# initramfs with its libraries. vb.vmm=firecracker on the command line: the harness runs
# under Firecracker (to check the harness itself), whose guest ends with a reboot.
now() { cut -d' ' -f1 /proc/uptime; }
t=$(sed -n 's/.*ferrovm\.test=\([a-z0-9]*\).*/\1/p' /proc/cmdline)
vmm=$(sed -n 's/.*vb\.vmm=\([a-z0-9]*\).*/\1/p' /proc/cmdline)
echo "@@L2-USERSPACE-UP@@ test=$t"
# Firecracker declares its virtio-mmio devices on the command line (virtio_mmio.device=...);
# busybox insmod does not read module parameters from there, so pass them on.
MMIO_ARGS=$(tr ' ' '\n' </proc/cmdline | sed -n 's/^virtio_mmio\.\(device=.*\)/\1/p' | tr '\n' ' ')
@VIRTIO_INSMOD@
@VSOCK_INSMOD@
@BALLOON_INSMOD@
n=0
while [ ! -e /dev/vsock ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
echo "G:VSOCK_DEV=$([ -e /dev/vsock ] && echo 1 || echo 0)"
echo "G:BALLOON_DRIVER=$(ls /sys/bus/virtio/drivers/virtio_balloon 2>/dev/null | grep -c virtio)"
echo "G:VSOCK_DRIVER=$(ls /sys/bus/virtio/drivers/vmw_vsock_virtio_transport 2>/dev/null | grep -c virtio)"
mkdir -p /mnt/t /tmp
# The memory the balloon scenarios fill: a tmpfs that may take almost all of RAM.
mount -t tmpfs -o size=95% fill /mnt/t
stty -echo 2>/dev/null

# meminfo: MemTotal, MemFree, MemAvailable in kB.
meminfo() {
  echo "G:MEM total=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo) free=$(awk '/^MemFree:/ { print $2 }' /proc/meminfo) avail=$(awk '/^MemAvailable:/ { print $2 }' /proc/meminfo)"
}

# touch MARGIN_MIB: writes all free memory but MARGIN_MIB into a tmpfs file and deletes it,
# so that the host has (nearly) every guest page resident before the balloon inflates.
touch_mem() {
  free=$(awk '/^MemFree:/ { print int($2 / 1024) }' /proc/meminfo)
  mib=$((free - $1))
  dd if=/dev/zero of=/mnt/t/touch bs=1M count=$mib 2>/dev/null
  echo "G:TOUCHED mib=$mib rc=$?"
  rm -f /mnt/t/touch
  meminfo
}

# fill MIB / unfill: a MIB tmpfs file, then its deletion (free page reporting).
fill() {
  dd if=/dev/zero of=/mnt/t/fill bs=1M count="$1" 2>/dev/null
  echo "G:FILLED mib=$1 rc=$?"
}
unfill() {
  rm -f /mnt/t/fill
  meminfo
}

# listening FILE: until socat's -d -d log FILE says it listens (0), at most 30 s (1). socat
# takes a while to start in L2; a connection before it listens would be refused.
listening() {
  n=0
  while ! grep -q 'listening on' "$1" 2>/dev/null; do
    [ $n -ge 300 ] && return 1
    sleep 0.1
    n=$((n + 1))
  done
}

# vs_servers: the guest's listeners for the host-initiated scenarios.
#   5000: reads 32 MiB, answers their sha256;
#   5003: up to 50 connections at once; each answers once all 50 have arrived (a barrier,
#         so they are open at the same time);
#   5006: answers a greeting (the API-configured device).
vs_servers() {
  # The barrier counts files with a glob (no process per poll: 50 handlers poll at once).
  cat >/tmp/g50.sh <<'EOF'
read l
: >"/tmp/g50/$l"
n=0
while :; do
  set -- /tmp/g50/*
  { [ $# -ge 50 ] || [ $n -ge 240 ]; } && break
  sleep 0.25
  n=$((n + 1))
done
echo "re-$l n=$#"
EOF
  rm -rf /tmp/g50
  mkdir -p /tmp/g50
  timeout 250 socat -d -d VSOCK-LISTEN:5000 SYSTEM:'head -c 33554432 | sha256sum' 2>/tmp/s5000.err &
  timeout 250 socat -d -d VSOCK-LISTEN:5003,fork,backlog=128 EXEC:'sh /tmp/g50.sh' 2>/tmp/s5003.err &
  timeout 250 socat -d -d VSOCK-LISTEN:5006 SYSTEM:'echo API-VSOCK-HELLO-42' 2>/tmp/s5006.err &
  listening /tmp/s5000.err && listening /tmp/s5003.err && listening /tmp/s5006.err
  echo "G:SERVERS-UP rc=$?"
}

# vs_guest: guest-initiated connections to L1's listeners (<uds>_PORT):
#   5001: a greeting each way; 5002: 4 MiB of random bytes, checksummed on both ends;
#   5011: 50 connections at once (L1's side is a barrier like 5003's), from the children of
#   one socat forwarding loopback TCP.
vs_guest() {
  timeout 30 socat VSOCK-CONNECT:2:5001 SYSTEM:'echo GUEST-HELLO-42; read r; echo "$r" >/tmp/hello' 2>/tmp/c5001.err
  echo "G:HELLO_RC=$?"
  echo "G:HELLO_REPLY=$(cat /tmp/hello 2>/dev/null)"
  head -c 4194304 /dev/urandom >/tmp/up
  echo "G:UP_SUM=$(sha256sum /tmp/up | cut -d' ' -f1)"
  t0=$(now)
  timeout 60 socat -u OPEN:/tmp/up VSOCK-CONNECT:2:5002 2>/tmp/c5002.err
  echo "G:UP_RC=$? secs=$t0-$(now)"
  rm -f /tmp/up
  # 50 at once: one socat forwards loopback TCP connections, each from its own child
  # process, to CID 2 port 5011; the clients are busybox nc (socat itself takes about a
  # second to start in L2, busybox far less).
  cat >/tmp/gcl.sh <<'EOF'
echo "g-$1"
read r
echo "$r" >/tmp/gc/$1
EOF
  rm -rf /tmp/gc
  mkdir -p /tmp/gc
  ip link set lo up
  timeout 150 socat -d -d TCP-LISTEN:7011,bind=127.0.0.1,reuseaddr,fork,backlog=128 VSOCK-CONNECT:2:5011 2>/tmp/c5011.err &
  fwd=$!
  listening /tmp/c5011.err || echo "G:FORWARDER-NOT-LISTENING"
  i=1 pids=""
  while [ $i -le 50 ]; do
    timeout 100 nc 127.0.0.1 7011 -e sh /tmp/gcl.sh $i &
    pids="$pids $!"
    i=$((i + 1))
  done
  wait $pids
  ok=0 i=1
  while [ $i -le 50 ]; do
    grep -q "^re-g-$i n=50" /tmp/gc/$i 2>/dev/null && ok=$((ok + 1))
    i=$((i + 1))
  done
  echo "G:GUEST50_OK=$ok"
  kill $fwd
  for f in /tmp/c5001.err /tmp/c5002.err; do [ -s $f ] && sed "s|^|G:ERR $f |" $f; done
  [ $ok -eq 50 ] || { head -n 2 /tmp/gc/1 /tmp/gc/50; grep -m 3 ' E ' /tmp/c5011.err; return 1; }
}

# vs_killer: a listener on 5004 writing what it receives into a file; once it holds 4 MiB,
# the listener is killed (SIGKILL) in mid-stream.
vs_killer() {
  rm -f /tmp/sink
  # Not under `timeout`: $! must be socat itself.
  socat -d -d -u VSOCK-LISTEN:5004 CREATE:/tmp/sink 2>/tmp/s5004.err &
  kp=$!
  listening /tmp/s5004.err || echo "G:KILLER-NOT-LISTENING"
  (
    n=0
    while [ "$(stat -c %s /tmp/sink 2>/dev/null || echo 0)" -lt 4194304 ] && [ $n -lt 1200 ]; do
      sleep 0.05
      n=$((n + 1))
    done
    size=$(stat -c %s /tmp/sink 2>/dev/null || echo 0)
    kill -9 $kp
    echo "G:KILLED size=$size"
    sleep 1
    rm -f /tmp/sink
  ) &
  echo "G:KILLER-UP"
}

off() {
  if [ "$vmm" = firecracker ]; then reboot -f; else poweroff -f; fi
}

echo "G:SHELL-READY"
while read -r id fn args; do
  case "$fn" in
    meminfo | touch_mem | fill | unfill | vs_servers | vs_guest | vs_killer | off)
      # shellcheck disable=SC2086
      $fn $args
      echo "G:DONE $id rc=$?"
      ;;
    "") ;;
    *) echo "G:DONE $id rc=127 unknown $fn" ;;
  esac
done
echo "G:CONSOLE-EOF"
