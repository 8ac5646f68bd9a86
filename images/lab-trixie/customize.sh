#!/bin/sh
# Runs on the host after mmdebstrap installed the packages; $1 is the new root.
set -eu
root="$1"
# Key-only root login; the lab passes its public key on the kernel command line at boot.
chroot "$root" passwd -l root >/dev/null
install -d -m 0700 "$root/root/.ssh"
cat > "$root/etc/ssh/sshd_config.d/lab.conf" <<'CONF'
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
PrintMotd no
CONF
: > "$root/etc/fstab"
echo lab > "$root/etc/hostname"
printf '127.0.0.1 localhost\n' > "$root/etc/hosts"
# systemd boots (init=systemd) should not wait on things a lab VM never has.
for unit in systemd-networkd-wait-online.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer; do
    chroot "$root" systemctl mask "$unit" >/dev/null 2>&1 || true
done
# The lab's stage 2 starts qemu-ga itself (its command channel) in both boots: udev's unit would
# start a second agent on the same port under systemd.
chroot "$root" systemctl mask qemu-guest-agent.service >/dev/null 2>&1 || true
# nfs-kernel-server is started by the lab when a scenario needs it, not at every boot.
chroot "$root" systemctl disable nfs-server.service rpcbind.service rpcbind.socket >/dev/null 2>&1 || true
# Guest modules come from a per-kernel disk mounted here at boot.
mkdir -p "$root/lib/modules"
rm -rf "$root/var/cache/apt/archives"/*.deb "$root/var/lib/apt/lists"/*
