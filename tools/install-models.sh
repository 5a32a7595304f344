#!/usr/bin/env bash
# Installs the model files (model.onnx, labels.csv) next to each committed manifest
# in models/<name>/. Takes them from $HEARKEN_SHARED/models (default ../shared) when
# that exists, otherwise downloads them from the URLs the manifest names; either way
# the ONNX file's sha256 must match the manifest.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
shared="${HEARKEN_SHARED:-$here/../shared}"
dest_root="${1:-$here/models}"

toml_get() { # file key -> value of `key = "value"`
  sed -n "s/^$2 *= *\"\([^\"]*\)\".*/\1/p" "$1" | head -n1
}

for manifest in "$here"/models/*/model.toml; do
  name="$(basename "$(dirname "$manifest")")"
  dest="$dest_root/$name"
  mkdir -p "$dest"
  [ "$dest" = "$(dirname "$manifest")" ] || cp "$manifest" "$dest/model.toml"
  onnx="$(toml_get "$manifest" onnx)"
  labels="$(toml_get "$manifest" labels)"
  want="$(toml_get "$manifest" sha256)"
  have=""
  [ -f "$dest/$onnx" ] && have="$(sha256sum "$dest/$onnx" | cut -d' ' -f1)"
  if [ "$have" != "$want" ]; then
    if [ -f "$shared/models/$name/$onnx" ]; then
      cp "$shared/models/$name/$onnx" "$dest/$onnx.part"
    else
      url="$(toml_get "$manifest" url)"
      echo "downloading $name from $url"
      curl -fL --retry 3 -o "$dest/$onnx.part" "$url"
    fi
    have="$(sha256sum "$dest/$onnx.part" | cut -d' ' -f1)"
    if [ "$have" != "$want" ]; then
      rm -f "$dest/$onnx.part"
      echo "error: $name/$onnx has sha256 $have, expected $want" >&2
      exit 1
    fi
    mv "$dest/$onnx.part" "$dest/$onnx"
  fi
  if [ ! -s "$dest/$labels" ]; then
    if [ -f "$shared/models/$name/$labels" ]; then
      cp "$shared/models/$name/$labels" "$dest/$labels"
    else
      curl -fL --retry 3 -o "$dest/$labels" "$(toml_get "$manifest" labels_url)"
    fi
  fi
  echo "model $name: ok ($dest)"
done
