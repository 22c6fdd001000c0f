# Body of the L2 guest's /init (after proc/sys/devtmpfs are mounted; `poweroff -f` follows).
# The scenario comes from the kernel command line: ferrovm.test=NAME.
t=$(sed -n 's/.*ferrovm\.test=\([a-z0-9]*\).*/\1/p' /proc/cmdline)
echo "@@L2-USERSPACE-UP@@ test=$t"
case "$t" in
  smp)
    echo "NPROC=$(nproc)"
    ;;
  panic)
    # Killing init makes the kernel panic; panic=-1 then resets at once.
    exit 1
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
