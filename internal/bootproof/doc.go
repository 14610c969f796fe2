// Package bootproof is the proof of docs/image.md §2 on a booting
// machine: otter's --board generic image of a small bootable release,
// everything from Debian packages (linux-image-arm64, busybox-static,
// systemd-boot-efi, all arm64), booted with qemu-system-aarch64 -M virt
// and UEFI from qemu-efi-aarch64, updating itself from a docker-registry
// on the host through QEMU's user network, rebooting into the staged
// release and confirming it; a release whose init panics is tried and
// the machine comes back on the previous one by itself; power cuts
// (qemu killed) during an update and during a tried boot come back on a
// good release. The package is its test alone.
package bootproof
