#!/bin/sh
# PID 1 of the test dom0 (a shell script, not systemd: see tests/xen/README.md). It does what
# Debian's xen and libvirtd units would, installs xend-rest from its .deb and starts it by its
# unit's ExecStart line with the administrator's drop-in, then the test agent.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
say() { echo "XEN-RIG $*" > /dev/console; }

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
# Xen's hot-plug locking.sh loops on `stat /dev/stdin`; without udev nobody makes these links.
ln -sf /proc/self/fd /dev/fd
ln -sf fd/0 /dev/stdin
ln -sf fd/1 /dev/stdout
ln -sf fd/2 /dev/stderr
# The initramfs root is capped at half of dom0's memory: images and libxl's state need more.
mount -o remount,size=85% /
say "init $(cut -d' ' -f1 /proc/uptime)"

for m in $(cat /etc/xen-rig-modules); do
    insmod /lib/modules/xen-rig/$m.ko || say "insmod $m failed"
done
mount -t xenfs xenfs /proc/xen
# /var/lock is /run/lock, which systemd-tmpfiles makes on a real host: libvirt locks a console's
# pty there (LCK.._pts_N) before it opens it.
mkdir -p /run/lock
mkdir -p /run/xen /run/xenstored /var/log/xen/console /var/lib/xen /var/log/libvirt /run/libvirt
/usr/lib/xen-4.17/bin/oxenstored --pid-file /run/xen/xenstored.pid
/usr/lib/xen-4.17/bin/xen-init-dom0 > /var/log/xen/xen-init-dom0.log 2>&1
# Guests' consoles to /var/log/xen/console/guest-NAME.log: the tests read them there.
/usr/lib/xen-4.17/bin/xenconsoled --pid-file=/run/xenconsoled.pid --log=guest --log-dir=/var/log/xen/console

# QEMU user networking: fixed addresses. Guests' NICs go on xenbr0, a bridge of their own.
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
ip link add xenbr0 type bridge
ip link set xenbr0 up
hostname dom0
say "xen $(cut -d' ' -f1 /proc/uptime)"

# --listen: libvirtd's TLS listener (port 16514, certificates in /etc/pki) for remote management.
libvirtd --daemon --listen --pid-file /run/libvirtd.pid
say "libvirtd $(cut -d' ' -f1 /proc/uptime)"

# The administrator's way: the package, then the unit with its drop-ins.
dpkg -i /rig/xend-rest.deb > /var/log/xend-rest-install.log 2>&1 || say "dpkg -i failed"
start_unit() {
    unit=/lib/systemd/system/$1.service
    files="$unit $(ls /etc/systemd/system/$1.service.d/*.conf 2>/dev/null)"
    # The last ExecStart= wins (an empty one only resets the list); RuntimeDirectory= and
    # Environment= are the only other directives a start by hand must honour.
    command=$(cat $files | sed -e ':a' -e '/\\$/{N;s/\\\n//;ba' -e '}' | sed -n 's/^ExecStart=//p' | grep . | tail -1)
    for dir in $(sed -n 's/^RuntimeDirectory=//p' $files); do mkdir -p /run/$dir; done
    eval "env $(sed -n 's/^Environment=//p' $files) $command" >> /var/log/$1.log 2>&1 &
}
start_unit xend-rest
python3 /rig/agent.py > /var/log/rig-agent.log 2>&1 &
say "ready $(cut -d' ' -f1 /proc/uptime)"

while true; do sleep 3600; done
