#!/bin/sh
# bhyve for FreeBSD VM `jump`, written by `kiln run --backend bhyve --dry-run`; not tested on a real bhyve host.
set -e
kldload -n vmm nmdm if_tap if_bridge
ifconfig tap0 create 2>/dev/null || true
sysctl net.link.tap.up_on_open=1
# forward 127.0.0.1:2222:22/tcp: e.g. pf `rdr pass on $ext_if proto tcp to port 2222 -> 10.0.2.15 port 22` (guest address from the recipe)
# The root disk: a copy, so every boot starts from the image as built.
cp /img/root.ffs /var/tmp/kiln-jump.ffs
bhyvectl --destroy --vm=kiln-jump 2>/dev/null || true
bhyveload -c /dev/nmdm-kiln-jump.0A -m 128M -d /var/tmp/kiln-jump.ffs -e vfs.root.mountfrom=ufs:/dev/vtbd0 kiln-jump
bhyve \
  -A -H -P \
  -c 1 \
  -m 128M \
  -s 0:0,hostbridge \
  -s 1:0,lpc \
  -s 2:0,virtio-net,tap0 \
  -s 3:0,virtio-blk,/var/tmp/kiln-jump.ffs \
  -s 4:0,virtio-blk,/data/jump.img,ro \
  -s 5:0,virtio-rnd \
  -l com1,/dev/nmdm-kiln-jump.0A \
  kiln-jump &
# console: cu -l /dev/nmdm-kiln-jump.0B    stop: bhyvectl --force-poweroff --vm=kiln-jump
wait; bhyvectl --destroy --vm=kiln-jump; rm -f /var/tmp/kiln-jump.ffs
