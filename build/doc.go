// Package build cross-builds aarch64 closures on another machine: it
// inspects and registers qemu user-mode emulation with binfmt_misc
// ([Status], [Install]) and drives Nix to build for aarch64-linux
// ([Build]). The result is a store path ready for bundle.Build.
//
// It is not a Nix evaluator and never builds anything itself: Nix does,
// in its sandbox, with the aarch64 interpreter the kernel starts for it.
package build
