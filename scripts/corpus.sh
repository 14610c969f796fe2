#!/usr/bin/env bash
# Prints the directory of the release corpus, generating it first if it is
# missing or was made from another version of ../shared/corpus. The corpus
# is about 115 MB a release and is kept out of the repository, in the cache.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
gen=${OTTER_CORPUS_GENERATOR:-$here/../shared/corpus/generate.py}
[ -f "$gen" ] || { echo "corpus: no generator at $gen" >&2; exit 1; }
spec=$(dirname "$gen")/releases.json
key=$(cat "$gen" "$spec" | sha256sum | cut -c1-16)
dir=${XDG_CACHE_HOME:-$HOME/.cache}/otter/corpus-$key
if [ ! -f "$dir/.complete" ]; then
  echo "corpus: generating $dir (a few minutes the first time)" >&2
  rm -rf "$dir.tmp"
  python3 "$gen" --spec "$spec" --out "$dir.tmp" >&2
  touch "$dir.tmp/.complete"
  rm -rf "$dir"
  mv "$dir.tmp" "$dir"
fi
echo "$dir"
