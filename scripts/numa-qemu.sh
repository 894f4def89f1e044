#!/usr/bin/env bash
# A real two-node NUMA run: boots a QEMU guest with two NUMA nodes (one CPU and 1 GiB
# each) on a Debian kernel and a busybox initramfs, runs `scrubheap run --nodes 2` in it,
# and checks from the run's own report and from /proc/PID/numa_maps that each node's
# slice is bound to its own guest node and that its scrubbers ran on that node's CPU.
#
#   bash scripts/numa-qemu.sh            # installs what it needs with apt-get (as root)
#
# Environment: NUMA_QEMU_ACCEL=tcg|kvm (default tcg: nested KVM is not always usable),
# NUMA_QEMU_TIMEOUT=seconds for the guest (default 300), NUMA_QEMU_LOG=file to keep
# the guest's console output.
# Exit status: 0 evidence shown; 1 evidence missing or wrong; 77 cannot run here
# (QEMU, a kernel or busybox cannot be installed, or the guest did not boot).
set -euo pipefail
cd "$(dirname "$0")/.."
accel=${NUMA_QEMU_ACCEL:-tcg}
limit=${NUMA_QEMU_TIMEOUT:-300}
start=$(date +%s)
say() { echo "numa-qemu: $* ($(( $(date +%s) - start )) s)"; }
skip() { echo "numa-qemu: SKIPPED: $*"; exit 77; }
fail() { echo "numa-qemu: FAILED: $*"; exit 1; }

kernel() { ls -1 /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n 1; }
busybox_bin() { for b in /bin/busybox /usr/bin/busybox; do [ -x "$b" ] && { echo "$b"; return; }; done; }
have_all() { command -v qemu-system-x86_64 >/dev/null && command -v cpio >/dev/null && [ -n "$(kernel)" ] && [ -n "$(busybox_bin)" ]; }

if ! have_all; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing qemu-system-x86, linux-image-amd64, busybox-static, cpio"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null || skip "apt-get update failed"
    apt-get install -y -q --no-install-recommends qemu-system-x86 linux-image-amd64 busybox-static cpio >/dev/null \
      || skip "apt-get could not install qemu-system-x86, linux-image-amd64, busybox-static and cpio"
  fi
  have_all || skip "needs qemu-system-x86_64, cpio, busybox and a kernel in /boot (as root on Debian this script installs them)"
fi
vmlinuz=$(kernel)
[ -r "$vmlinuz" ] || skip "$vmlinuz is not readable"

say "building scrubheap (release)"
cargo build --release -q -p scrubheap-cli
bin=target/release/scrubheap

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root"/{bin,proc,sys,dev,tmp}
cp "$(busybox_bin)" "$root/bin/busybox"
cp "$bin" "$root/bin/scrubheap"
# The shared libraries the binaries need, at the paths the dynamic loader looks for them.
for b in "$root/bin/busybox" "$root/bin/scrubheap"; do
  for lib in $(ldd "$b" 2>/dev/null | grep -o '/[^ ]*' || true); do
    cp --parents -L "$lib" "$root"
  done
done
cat > "$root/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "=== guest nodes online: $(cat /sys/devices/system/node/online)"
for n in /sys/devices/system/node/node[0-9]*; do
  echo "=== guest $(basename "$n"): cpus $(cat "$n/cpulist"), $(grep MemTotal "$n/meminfo" | tr -s ' ' | cut -d' ' -f3-)"
done
cd /tmp
/bin/scrubheap run --nodes 2 --memory 512MiB --duration 5 --json /tmp/run.json --report /tmp/report > /tmp/run.out 2>&1 &
pid=$!
# The arena's mappings (one line per policy) once the run has prefaulted them and
# started its guests (its first progress line).
i=0
while [ $i -lt 1200 ] && ! grep -q 'guests alive' /tmp/run.out 2>/dev/null; do sleep 0.1; i=$((i + 1)); done
echo "=== numa_maps of scrubheap (pid $pid), its bound mappings:"
grep 'bind:' /proc/$pid/numa_maps 2>/dev/null | sed 's/^/numa_maps: /'
wait $pid
echo "=== scrubheap run exit status $?"
sed 's/^/run: /' /tmp/run.out
echo "=== report.json numa:"
sed -n '/"numa": \[/,/^  \]/p' /tmp/run.json | sed 's/^/json: /'
echo "=== guest done"
poweroff -f
EOF
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet) | gzip -1 > "$work/initrd.gz"

case "$accel" in
  kvm) accel_args=(-accel kvm -cpu host) ;;
  *) accel_args=(-accel tcg) ;;
esac
log=${NUMA_QEMU_LOG:-$work/console.log}
say "booting $vmlinuz under QEMU ($accel): 2 CPUs, 2 NUMA nodes of 1 GiB each"
set +e
timeout "$limit" qemu-system-x86_64 "${accel_args[@]}" -smp 2 -m 2G \
  -object memory-backend-ram,id=m0,size=1G -object memory-backend-ram,id=m1,size=1G \
  -numa node,nodeid=0,cpus=0,memdev=m0 -numa node,nodeid=1,cpus=1,memdev=m1 \
  -kernel "$vmlinuz" -initrd "$work/initrd.gz" -append "console=ttyS0 quiet panic=-1" \
  -display none -serial "file:$log" -monitor none -no-reboot </dev/null
status=$?
set -e
# The serial console ends lines with CR LF.
tr -d '\r' < "$log" > "$work/console.txt" && cp "$work/console.txt" "$log"
say "guest stopped (QEMU status $status)"
grep -E '^(=== |numa_maps: |json: |run: (node slices|scrubheap: numa|memory ))' "$log" || true

grep -q '^=== guest nodes online: 0-1' "$log" || skip "the guest did not boot with two NUMA nodes (console: $log)"
grep -q '^=== guest done' "$log" || fail "the guest did not finish the run within $limit s"
grep -q '^=== scrubheap run exit status 0' "$log" || fail "scrubheap run failed in the guest"
for n in 0 1; do
  grep -Eq "^numa_maps: .* bind:$n .*N$n=[0-9]+" "$log" || fail "numa_maps shows no mapping bound to node $n with pages on node $n"
  if grep -Eq "^numa_maps: .* bind:$n .*N$((1 - n))=" "$log"; then fail "memory bound to node $n has pages on node $((1 - n))"; fi
  grep -Eq "^run: scrubheap: numa n$n -> host node $n .*: verified$" "$log" \
    || fail "the run's report does not verify node $n's binding and scrubber CPUs"
done
grep -q '^json: .*"bound_to": 1' "$log" || fail "report.json has no numa placement"
say "two nodes bound and pinned: evidence above"
