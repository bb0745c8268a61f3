#!/usr/bin/env bash
# Regenerate the *_pb2.py and *_pb2.pyi modules from every .proto file in this folder.
#
#   exporters/remote_write/proto/generate.sh        (what `make proto` runs)
#   PYTHON=/path/to/venv/bin/python exporters/remote_write/proto/generate.sh
#
# Needs grpcio-tools (the `dev` extra). The output depends only on the .proto and the grpcio-tools version,
# so the same version reproduces the committed files byte for byte.
#
# Each .proto is compiled from a scratch tree as `headwater/<file>.proto`: that is the file name the
# generated module registers in protobuf's default descriptor pool, chosen so it cannot collide with another
# library's remote-write schema file (many ship a `remote.proto` or `types.proto`).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python3}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/in/headwater" "$work/out"
for proto in "$here"/*.proto; do
    name="$(basename "$proto" .proto)"
    cp "$proto" "$work/in/headwater/$name.proto"
    "$python" -m grpc_tools.protoc \
        --proto_path="$work/in" \
        --python_out="$work/out" \
        --pyi_out="$work/out" \
        "headwater/$name.proto"
    cp "$work/out/headwater/${name}_pb2.py" "$here/${name}_pb2.py"
    cp "$work/out/headwater/${name}_pb2.pyi" "$here/${name}_pb2.pyi"
    echo "generated $here/${name}_pb2.py{,i}"
done
echo "with $("$python" -m grpc_tools.protoc --version)"
