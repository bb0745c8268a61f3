#!/usr/bin/env bash
# Regenerate remote_write_v1_pb2.py and remote_write_v1_pb2.pyi from remote_write_v1.proto.
#
#   exporters/remote_write/proto/generate.sh        (what `make proto` runs)
#   PYTHON=/path/to/venv/bin/python exporters/remote_write/proto/generate.sh
#
# Needs grpcio-tools (the `dev` extra). The output depends only on the .proto and the grpcio-tools version,
# so the same version reproduces the committed files byte for byte.
#
# The .proto is compiled from a scratch tree as `headwater/remote_write_v1.proto`: that is the file name the
# generated module registers in protobuf's default descriptor pool, chosen so it cannot collide with another
# library's remote-write schema file (many ship a `remote.proto` or `types.proto`).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python3}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/in/headwater" "$work/out"
cp "$here/remote_write_v1.proto" "$work/in/headwater/remote_write_v1.proto"

"$python" -m grpc_tools.protoc \
    --proto_path="$work/in" \
    --python_out="$work/out" \
    --pyi_out="$work/out" \
    headwater/remote_write_v1.proto

cp "$work/out/headwater/remote_write_v1_pb2.py" "$here/remote_write_v1_pb2.py"
cp "$work/out/headwater/remote_write_v1_pb2.pyi" "$here/remote_write_v1_pb2.pyi"
echo "generated $here/remote_write_v1_pb2.py{,i} with $("$python" -m grpc_tools.protoc --version)"
