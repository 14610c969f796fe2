{ bbdir, tag ? "1" }:
let
  bb = builtins.path { path = bbdir; name = "otter-test-busybox"; };
  mk = name: script: derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "${bb}/busybox";
    args = [ "sh" "-c" script ];
    PATH = "${bb}";
  };
  lib = mk "otter-test-lib-${tag}" ''
    ${bb}/busybox mkdir -p $out/lib $out/share
    echo "library ${tag}" > $out/lib/libgreet.txt
    ${bb}/busybox ln -s ../lib/libgreet.txt $out/share/link
  '';
  app = mk "otter-test-app-${tag}" ''
    ${bb}/busybox mkdir -p $out/bin
    printf '#!/bin/sh\ncat ${lib}/lib/libgreet.txt\n' > $out/bin/app
    ${bb}/busybox chmod +x $out/bin/app
  '';
in mk "otter-test-root-${tag}" ''
  ${bb}/busybox mkdir -p $out
  ${bb}/busybox ln -s ${app}/bin $out/bin
  echo ${lib} > $out/deps
''
