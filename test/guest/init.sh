#!/bin/sh
# /init of the nbd-cow test guest (busybox sh, PID 1). Built into the initramfs by build.ts.
#
# Kernel command line:
#   nbdcow.mode=drive    the disk is /dev/vda (QEMU's own NBD client, -drive file=nbd://…)
#   nbdcow.mode=probe    only print done=ok and power off (the KVM probe)
#   nbdcow.mode=client   the disk is /dev/nbd0, attached by nbd-client over the QEMU user
#                        network (guestfwd 10.0.2.100:10809 -> nbd-cow on the host's loopback)
#   nbdcow.export=NAME   export name for nbd-client -N
#   nbdcow.conns=N       nbd-client -C N: N connections for /dev/nbd0 (default 1)
#   nbdcow.tls=HOSTNAME  nbd-client -enable-tls with the certificates guest.ts appended to the
#                        initramfs in /etc/nbd-cow/tls (ca-cert.pem, client-cert.pem,
#                        client-key.pem); the server's certificate must name HOSTNAME
#   nbdcow.expect=refused  nbd-client must fail (e.g. -C 4 on an export without CAN_MULTI_CONN):
#                        report the kernel's reason as refused-by-kernel=… and stop with done=ok
#   nbdcow.prior=absent|present  what the disk must hold from an earlier boot (guest/ with
#                        written.bin and note.txt); fail=prior-… otherwise. Default: only report
#   nbdcow.tag=WORD      written into the guest's note file, to tell boots apart
#
# Every result is one console line "NBDCOW:key=value" (values have no spaces). The last line
# is "NBDCOW:done=ok", or "NBDCOW:fail=STEP" followed by the kernel log, then power off.

export PATH=/bin:/sbin
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/lib64

/bin/busybox mkdir -p /proc /sys /dev /mnt /tmp /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

say() { echo "NBDCOW:$1"; }
uptime_s() { cut -d" " -f1 /proc/uptime; }

off() {
  sync
  poweroff -f
  sleep 10
}

fail() {
  say "fail=$1"
  echo "----- kernel log (tail) -----"
  dmesg | tail -n 60
  echo "----- end of kernel log -----"
  off
}

MODE=
EXPORT=
TAG=none
CONNS=1
EXPECT=ok
PRIOR=any
TLS_HOST=
for word in $(cat /proc/cmdline); do
  case "$word" in
    nbdcow.mode=*) MODE="${word#*=}" ;;
    nbdcow.export=*) EXPORT="${word#*=}" ;;
    nbdcow.tag=*) TAG="${word#*=}" ;;
    nbdcow.conns=*) CONNS="${word#*=}" ;;
    nbdcow.expect=*) EXPECT="${word#*=}" ;;
    nbdcow.prior=*) PRIOR="${word#*=}" ;;
    nbdcow.tls=*) TLS_HOST="${word#*=}" ;;
  esac
done
say "boot=$MODE"
if [ "$MODE" = probe ]; then
  # Accelerator probe (guest.ts): the kernel booted and ran init; nothing else.
  say done=ok
  off
fi

# Modules in dependency order, one "file.ko [params]" a line.
while read -r ko params; do
  [ -n "$ko" ] || continue
  # shellcheck disable=SC2086
  insmod "/lib/modules/$ko" $params || fail "insmod-$ko"
done < /lib/modules/order
say "modules=ok"
say "t-modules=$(uptime_s)"

# wait_for TEST PATH: poll up to 20 s.
wait_for() {
  i=0
  while ! test "$1" "$2"; do
    i=$((i + 1))
    [ "$i" -le 200 ] || return 1
    usleep 100000
  done
}

case "$MODE" in
  drive)
    DEV=/dev/vda
    wait_for -b "$DEV" || fail "no-$DEV"
    ;;
  client)
    DEV=/dev/nbd0
    wait_for -e /sys/class/net/eth0 || fail no-eth0
    ip link set lo up
    ip addr add 10.0.2.15/24 dev eth0 || fail ip-addr
    ip link set eth0 up || fail ip-link
    wait_for -b "$DEV" || fail "no-$DEV"
    set --
    [ "$CONNS" -gt 1 ] && set -- -C "$CONNS"
    say "nbd-client-connections=$CONNS"
    if [ -n "$TLS_HOST" ]; then
      TLS_DIR=/etc/nbd-cow/tls
      for f in ca-cert.pem client-cert.pem client-key.pem; do
        [ -s "$TLS_DIR/$f" ] || fail "no-tls-$f"
      done
      # GnuTLS checks the certificates' dates against this clock (the RTC: the host's time).
      say "clock=$(date +%s)"
      set -- "$@" -enable-tls -cacertfile "$TLS_DIR/ca-cert.pem" -certfile "$TLS_DIR/client-cert.pem" \
        -keyfile "$TLS_DIR/client-key.pem" -tlshostname "$TLS_HOST"
      say "tls=$TLS_HOST"
      # GnuTLS blocks in getrandom() until this is done (virtio-rng: at once).
      say "crng-ready=$(dmesg | grep -q 'crng init done' && echo yes || echo no)"
    fi
    if ! nbd-client 10.0.2.100 10809 "$DEV" -N "$EXPORT" -b 512 "$@"; then
      if [ "$EXPECT" = refused ]; then
        say nbd-client=refused
        # The kernel's reason (nbd_start_device), spaces made underscores for the marker.
        why=$(dmesg | grep -i 'nbd' | grep -i 'multiple connections' | tail -n 1 | sed 's/^\[[^]]*\] *//; s/ /_/g')
        say "refused-by-kernel=${why:-none}"
        say "t-done=$(uptime_s)"
        say done=ok
        off
      fi
      fail nbd-client
    fi
    [ "$EXPECT" = refused ] && fail nbd-client-not-refused
    # The size becomes known once the device is connected.
    i=0
    while [ "$(cat /sys/block/nbd0/size)" = 0 ]; do
      i=$((i + 1))
      [ "$i" -le 100 ] || fail nbd0-size
      usleep 100000
    done
    say "nbd-client=connected"
    ;;
  *)
    fail "unknown-mode-$MODE"
    ;;
esac
say "t-attached=$(uptime_s)"
say "dev-sectors=$(cat /sys/block/${DEV#/dev/}/size)"

sha() { sha256sum "$1" | cut -d' ' -f1; }

mount -t ext4 "$DEV" /mnt || fail mount
say "hello-sha256=$(sha /mnt/hello.txt)"
say "data-sha256=$(sha /mnt/data.bin)"
if [ -e /mnt/guest/written.bin ]; then
  say prior-write=present
  say "prior-sha256=$(sha /mnt/guest/written.bin)"
  say "prior-note=$(cat /mnt/guest/note.txt)"
  [ "$PRIOR" != absent ] || fail prior-write-present
else
  say prior-write=absent
  [ "$PRIOR" != present ] || fail prior-write-absent
fi

mkdir -p /mnt/guest || fail mkdir
echo "written-by-$TAG" > /mnt/guest/note.txt || fail write-note
dd if=/dev/urandom of=/mnt/guest/written.bin bs=64k count=48 2>/dev/null || fail write-data
say "written-sha256=$(sha /mnt/guest/written.bin)"
say "t-written=$(uptime_s)"
sync || fail sync
umount /mnt || fail umount
blockdev --flushbufs "$DEV"
echo 3 > /proc/sys/vm/drop_caches

mount -t ext4 "$DEV" /mnt || fail remount
say "reread-sha256=$(sha /mnt/guest/written.bin)"
say "note=$(cat /mnt/guest/note.txt)"
say "hello-after-sha256=$(sha /mnt/hello.txt)"
umount /mnt || fail umount-2

if [ "$MODE" = client ]; then
  nbd-client -d "$DEV" || fail nbd-client-d
  say "nbd-client=disconnected"
fi
say "t-done=$(uptime_s)"
say done=ok
off
