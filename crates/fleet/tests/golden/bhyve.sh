#!/bin/sh
# bhyve for VM `web`, written by `kiln run --backend bhyve --dry-run`; not tested on a real bhyve host.
set -e
kldload -n vmm nmdm if_tap if_bridge
ifconfig tap0 create 2>/dev/null || true
sysctl net.link.tap.up_on_open=1
# forward 127.0.0.1:8080:80/tcp: e.g. pf `rdr pass on $ext_if proto tcp to port 8080 -> 10.0.2.15 port 80` (guest address from the recipe)
# Loader: grub-bhyve (pkg install grub2-bhyve) reads the kernel and initramfs from the host;
# it needs a bzImage (for UEFI instead: drop this step and add `-l bootrom,/usr/local/share/uefi-firmware/BHYVE_UEFI.fd`).
printf '(host) /\n' > /tmp/kiln-web.map
printf 'linux (host)/img/vmlinux console=ttyS0 panic=-1 quiet kiln.vport=data\ninitrd (host)/img/initramfs.cpio.zst\nboot\n' | grub-bhyve -m /tmp/kiln-web.map -r host -M 96M kiln-web
bhyve \
  -A -H -P \
  -c 2 \
  -m 96M \
  -s 0:0,hostbridge \
  -s 1:0,lpc \
  -s 2:0,virtio-net,tap0 \
  -s 3:0,virtio-blk,/data/web.img \
  -s 4:0,virtio-9p,share0=/srv/www,ro \
  -s 5:0,virtio-rnd \
  -s 6:0,virtio-console,org.kiln.control=/var/run/kiln-web.control,data=/var/lib/kiln/vms/web/vport-data.sock \
  -l com1,/dev/nmdm-kiln-web.0A \
  kiln-web &
# console: cu -l /dev/nmdm-kiln-web.0B    graceful stop: echo poweroff | nc -U /var/run/kiln-web.control
wait; bhyvectl --destroy --vm=kiln-web
# the share uses virtio-9p: the guest kernel needs 9p (Debian's cloud kernel has none)
