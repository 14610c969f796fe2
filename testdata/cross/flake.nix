# The same closure as a flake, for `otter build .#packages.aarch64-linux.app`.
# It has no inputs; the test copies busybox beside it.
{
  outputs = { self }: {
    packages.aarch64-linux = import ./closure.nix { bbdir = ./busybox; tag = "flake"; };
  };
}
