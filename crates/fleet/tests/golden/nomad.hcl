job "kiln-web" {
  datacenters = ["dc1"]
  type        = "service"

  group "web" {
    network {
      port "p80" {
        static = 8080
        to     = 80
      }
    }

    task "web" {
      driver = "qemu"

      # Publish the image folder (e.g. on a web server) and point these at it.
      artifact {
        source      = "https://artifacts.example/web/vmlinux"
        destination = "local/"
      }
      artifact {
        source      = "https://artifacts.example/web/initramfs.cpio.zst"
        destination = "local/"
      }

      config {
        image_path   = "local/empty.img"
        accelerator  = "kvm"
        machine_type = "microvm"
        args = [
          "-kernel",
          "local/vmlinux",
          "-append",
          "console=ttyS0 panic=-1 quiet kiln.vport=data",
          "-smp",
          "2",
          "-initrd",
          "local/initramfs.cpio.zst",
          "-netdev",
          "user,id=net0,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=udp:127.0.0.1:5353-:53",
          "-device",
          "virtio-net-device,netdev=net0",
          "-drive",
          "file=/data/web.img,if=none,id=drive0,format=raw",
          "-device",
          "virtio-blk-device,drive=drive0",
          "-fsdev",
          "local,id=fs0,path=/srv/www,security_model=none,readonly=on",
          "-device",
          "virtio-9p-device,fsdev=fs0,mount_tag=share0",
          "-device",
          "virtio-serial-device",
          "-chardev",
          "socket,id=vport0,path=/var/lib/kiln/vms/web/vport-data.sock,server=on,wait=off",
          "-device",
          "virtserialport,chardev=vport0,name=data",
          "-device",
          "virtio-rng-device",
          "-device",
          "virtio-balloon-device,free-page-reporting=on",
        ]
      }

      resources {
        cpu    = 1000
        memory = 160
      }
    }
  }
}
