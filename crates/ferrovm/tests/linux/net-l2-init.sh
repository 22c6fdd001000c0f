# Body of the L2 guest's /init for the networking tests (tests/linux_net.rs; after proc,
# sys and devtmpfs are mounted; `poweroff -f` follows). One guest runs every scenario, in
# turn, each on a NIC of its own. The kernel command line says which:
# ferrovm.tests=NAME:N,NAME:N,... where NIC N has the MAC 02:00:00:00:0N:02 and, on a tap,
# the address 10.0.N.2/24 with L1 at 10.0.N.1 (net-scenarios.sh gives them so);
# net.bytes=N is the bytes per flow of the mq scenario.
# Lines for the test are "G:KEY=VALUE", inside "G:SECTION NAME" ... "G:END NAME"; lines
# "G:MARK NAME" without "=" are progress markers the L1 script waits for. socat and
# iperf3 are in the initramfs with their libraries.
tests=$(sed -n 's/.*ferrovm\.tests=\([a-z0-9:,]*\).*/\1/p' /proc/cmdline)
bytes=$(sed -n 's/.*net\.bytes=\([0-9]*\).*/\1/p' /proc/cmdline)
now() { cut -d' ' -f1 /proc/uptime; }
echo "@@L2-USERSPACE-UP@@ tests=$tests"
@VIRTIO_INSMOD@
@NET_INSMOD@
want=$(echo "$tests" | tr ',' '\n' | grep -c .)
n=0
while [ "$(ls /sys/class/net | grep -c '^eth')" -lt "$want" ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
ip link set lo up
echo "G:NICS=$(ls /sys/class/net | grep '^eth' | tr '\n' ' ')"

# The interface with MAC $1.
iface_of() {
  for d in /sys/class/net/eth*; do
    [ "$(cat "$d/address")" = "$1" ] && { basename "$d"; return; }
  done
}
# $if up with the static address; waits (up to 10 s) for the carrier.
static_up() {
  ip addr add "$addr" dev "$if"
  ip link set "$if" up
  n=0
  while [ "$(cat /sys/class/net/$if/operstate)" != up ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
  echo "G:OPERSTATE=$(cat /sys/class/net/$if/operstate)"
}
# Waits for L1 to connect to port 7000 (at most 120 s): L1 has done its part.
wait_l1() {
  echo "G:MARK $t waiting"
  timeout 120 socat -u TCP-LISTEN:7000,reuseaddr - >/tmp/l1-said 2>/dev/null
  echo "G:L1_SAID=$(cat /tmp/l1-said)"
}
# The rate iperf3's JSON ($1) gives for the bytes received, in bits per second.
received_bps() {
  awk '/"sum_received"/ { f = 1 } f && /"bits_per_second"/ { gsub(/[^0-9.e+]/, "", $2); print $2; exit }' "$1"
}

# Ping L1; then 64 MiB from L1 (port $1) and the same bytes back (port $2), checksummed
# on both ends.
xfer() {
  static_up
  echo "G:MARK $t net-up"
  wait_l1
  ping -c 3 -W 5 "$peer" >/dev/null 2>&1
  echo "G:PING_RC=$?"
  t0=$(now)
  timeout 150 socat -b 262144 -u TCP:"$peer":"$1" CREATE:/tmp/got
  echo "G:RX_RC=$? secs=$t0-$(now)"
  echo "G:RX_BYTES=$(wc -c </tmp/got)"
  echo "G:RX_SUM=$(sha256sum /tmp/got | cut -d' ' -f1)"
  t0=$(now)
  timeout 150 socat -b 262144 -u OPEN:/tmp/got TCP:"$peer":"$2"
  echo "G:TX_RC=$? secs=$t0-$(now)"
  rm -f /tmp/got
  echo "G:MARK $t sent"
}

sc_tap() { xfer 6102 6101; }
sc_vhost() { xfer 6202 6201; }

# Two TCP flows each way, one pinned to each CPU; then a UDP flow from each CPU.
sc_mq() {
  echo "G:NPROC=$(nproc)"
  static_up
  echo "G:MARK $t net-up"
  wait_l1
  for c in 1 2; do
    taskset $c timeout 120 socat -u OPEN:/dev/zero,readbytes="$bytes" TCP:"$peer":501$c &
    taskset $c timeout 120 socat -u TCP:"$peer":502$c - 2>/dev/null | wc -c >/tmp/mq-rx$c &
  done
  wait
  echo "G:MQ_RX_BYTES=$(cat /tmp/mq-rx1) $(cat /tmp/mq-rx2)"
  # TCP's transmit queue follows the CPU that takes the (single) interrupt once ACKs
  # clock the data; UDP sent from a pinned CPU stays on that CPU's queue (XPS), and
  # L1 echoes every datagram (tun sends it to the queue the flow came from).
  echo "G:XPS=$(cat /sys/class/net/$if/queues/tx-0/xps_cpus) $(cat /sys/class/net/$if/queues/tx-1/xps_cpus)"
  for c in 1 2; do
    head -c "$bytes" /dev/zero | taskset $c timeout 60 socat -b 1400 -t 2 - UDP:"$peer":503$c 2>/dev/null | wc -c >/tmp/mq-echo$c &
  done
  wait
  echo "G:MQ_UDP_ECHO_BYTES=$(cat /tmp/mq-echo1) $(cat /tmp/mq-echo2)"
  echo "G:MARK $t done"
  wait_l1
}

# passt's DHCP; then a TCP server on port 8000, which L1 reaches on the forwarded port.
sc_user() {
  mkdir -p /etc
  cat >/etc/udhcpc.sh <<'SCRIPT'
#!/bin/sh
case "$1" in
  deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew)
    ifconfig "$interface" "$ip" netmask "$subnet"
    for r in $router; do ip route add default via "$r" dev "$interface"; break; done
    echo "G:DHCP_LEASE=$ip/$subnet router=$router dns=$dns" >/tmp/lease
    ;;
esac
SCRIPT
  chmod 755 /etc/udhcpc.sh
  ip link set "$if" up
  timeout 40 udhcpc -i "$if" -s /etc/udhcpc.sh -f -q -n -t 10 -T 2 >/dev/null 2>&1
  echo "G:DHCP_RC=$?"
  cat /tmp/lease 2>/dev/null
  echo "G:ADDR=$(ip -4 addr show dev "$if" | awk '/inet / { print $2; exit }')"
  echo "G:ROUTE=$(ip route | awk '/^default/ { print $3 " " $5; exit }')"
  # One connection per socat; L1 may need a second try while the first starts.
  # The client speaks first (a request line, as HTTP). In L1, a guest server that writes
  # its reply and closes at once, before the host side sent anything, never reached the
  # host through Debian 12's passt, under QEMU exactly as under ferrovm.
  (for i in 1 2 3 4 5 6; do timeout 60 socat TCP-LISTEN:8000,reuseaddr SYSTEM:'read -r l; echo L2-SERVER-REPLY-$l'; done) &
  server=$!
  sleep 0.5
  echo "G:SELF_REPLY=$(echo 42 | timeout 10 socat -t 5 - TCP:127.0.0.1:8000 2>&1)"
  echo "G:MARK $t ready"
  wait_l1
  netstat -tn 2>/dev/null | sed 's/^/G:NETSTAT /'
  kill $server 2>/dev/null
}

# iperf3 each way for 5 s, the first second (the limiter's initial bucket) left out.
sc_rate() {
  static_up
  echo "G:MARK $t net-up"
  wait_l1
  timeout 60 iperf3 -c "$peer" -t 5 -O 1 -J >/tmp/tx.json 2>&1
  echo "G:RATE_TX_RC=$?"
  echo "G:RATE_TX_BPS=$(received_bps /tmp/tx.json)"
  timeout 60 iperf3 -c "$peer" -t 5 -O 1 -R -J >/tmp/rx.json 2>&1
  echo "G:RATE_RX_RC=$?"
  echo "G:RATE_RX_BPS=$(received_bps /tmp/rx.json)"
  grep -h '"error"' /tmp/tx.json /tmp/rx.json
}

# Link down for 14 s while L1 floods the tap; then up again and ping.
sc_flood() {
  static_up
  echo "G:MARK $t net-up"
  wait_l1
  ping -c 2 -W 5 "$peer" >/dev/null 2>&1
  echo "G:PING_RC=$?"
  ip link set "$if" down
  echo "G:MARK $t link-down"
  sleep 14
  ip link set "$if" up
  n=0
  while [ "$(cat /sys/class/net/$if/operstate)" != up ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
  ping -c 3 -W 5 "$peer" >/dev/null 2>&1
  echo "G:PING_AFTER_RC=$?"
}

for tn in $(echo "$tests" | tr ',' ' '); do
  t=${tn%%:*} nic=${tn##*:}
  mac=02:00:00:00:0$nic:02 addr=10.0.$nic.2/24 peer=10.0.$nic.1
  if=$(iface_of $mac)
  echo "G:SECTION $t"
  echo "G:IFACE=$if"
  echo "G:MAC=$(cat /sys/class/net/$if/address 2>/dev/null)"
  echo "G:QUEUES=$(ls /sys/class/net/$if/queues 2>/dev/null | tr '\n' ' ')"
  [ -n "$if" ] && sc_$t
  echo "G:END $t"
done
echo "G:BYE"
