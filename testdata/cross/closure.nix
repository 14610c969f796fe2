# A closure of three aarch64 store paths that needs nothing from outside:
# no nixpkgs, no network. The builder is Debian's static arm64 busybox
# (from the release corpus, or any arm64 busybox-static), run by Nix
# through qemu binfmt in the sandbox.
#
#   nix build -f closure.nix --arg bbdir /dir/holding/busybox app
#
# bbdir must hold only a file named `busybox`: Nix passes the builder's
# base name as argv[0], and busybox picks its applet from it.
{ bbdir ? ./busybox, tag ? "1", fail ? "" }:
let
  bb = builtins.path { path = bbdir; name = "busybox-aarch64"; };
  mk = name: script: derivation {
    inherit name;
    system = "aarch64-linux";
    builder = "${bb}/busybox";
    args = [ "sh" "-c" script ];
  };
  greeting = mk "otter-cross-greeting-${tag}" ''
    ${bb}/busybox mkdir -p $out/share
    ${bb}/busybox echo "hello from aarch64 (${tag}), built on $(${bb}/busybox uname -m)" > $out/share/greeting
  '';
  tools = mk "otter-cross-tools-${tag}" ''
    ${bb}/busybox mkdir -p $out/bin
    ${bb}/busybox cp ${bb}/busybox $out/bin/busybox
    ${bb}/busybox printf '#!%s/bin/busybox sh\nexec %s/bin/busybox cat %s/share/greeting\n' $out $out ${greeting} > $out/bin/greet
    ${bb}/busybox chmod 555 $out/bin/busybox $out/bin/greet
    ${if fail != "" then "${bb}/busybox echo 'otter-test: failing on purpose' >&2; exit 3" else ""}
  '';
in {
  inherit greeting tools;
  app = mk "otter-cross-app-${tag}" ''
    ${bb}/busybox mkdir -p $out/bin
    ${bb}/busybox ln -s ${tools}/bin/greet $out/bin/app
    ${bb}/busybox echo ${tools} ${greeting} > $out/manifest
  '';
}
