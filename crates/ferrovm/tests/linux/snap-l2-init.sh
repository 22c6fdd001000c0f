# Body of the L2 guest's /init for the snapshot tests (tests/linux_snapshot.rs; after proc,
# sys and devtmpfs are mounted; `poweroff -f` follows). Parameters on the kernel command
# line: snap.ip=ADDR/PREFIX and snap.peer=ADDR give eth0 a static address and a host to
# ping (no network without them).
#
# The guest counts for ever, every ~0.2 s:
#   1. writes the record "REC <n, 8 digits>" into sector n of /dev/vda and fsyncs it;
#   2. reads sector n-1 back from the disk (O_DIRECT, not the page cache): rd=ok when it
#      holds record n-1;
#   3. pings the peer once (net=<ping's status>, "-" without network);
#   4. prints "COUNT <n> w=<dd's status> rd=ok|bad:<what it read> net=... up=<uptime>" --
#      so a printed COUNT n means record n is on the disk;
#   5. prints any new kernel messages as "KMSG <line>" (the ring buffer is emptied after
#      boot), which is how soft lockups, RCU stalls, hung tasks or clocksource complaints
#      below the console's log level still show up.
# The counter lives only in this shell's memory: after a restore it goes on from the value
# the snapshot holds.
arg() { sed -n "s/.*snap\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
addr=$(arg ip)
peer=$(arg peer)
echo "@@L2-USERSPACE-UP@@"
@VIRTIO_INSMOD@
@NET_INSMOD@
n=0
while [ ! -b /dev/vda ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
[ -b /dev/vda ] || echo "G:NO-DISK"
if [ -n "$addr" ]; then
  n=0
  while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
  ip link set lo up
  ip addr add "$addr" dev eth0
  ip link set eth0 up
  echo "G:MAC=$(cat /sys/class/net/eth0/address)"
fi
echo "G:CLOCKSOURCE=$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
dmesg -c >/dev/null
echo "G:READY"
n=0
while :; do
  n=$((n + 1))
  printf 'REC %08d\n' "$n" | dd of=/dev/vda bs=512 seek="$n" conv=sync,fsync 2>/dev/null
  w=$?
  rd=ok
  if [ "$n" -gt 1 ]; then
    got=$(dd if=/dev/vda bs=512 skip=$((n - 1)) count=1 iflag=direct 2>/dev/null | tr -d '\0\n')
    [ "$got" = "$(printf 'REC %08d' $((n - 1)))" ] || rd="bad:$got"
  fi
  net=-
  if [ -n "$peer" ]; then
    ping -c 1 -W 2 "$peer" >/dev/null 2>&1
    net=$?
  fi
  echo "COUNT $n w=$w rd=$rd net=$net up=$(cut -d' ' -f1 /proc/uptime)"
  k=$(dmesg -c)
  [ -n "$k" ] && echo "$k" | sed 's/^/KMSG /'
  sleep 0.2
done
