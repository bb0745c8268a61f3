#!/usr/bin/env bash
# Regenerates rpc_status_pb2.py from rpc_status.proto (needs grpcio-tools: pip install '.[dev]').
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python=${PYTHON:-python3}
include="$("$python" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')"
"$python" -m grpc_tools.protoc -I"$here" -I"$include" --python_out="$here" --pyi_out="$here" "$here/rpc_status.proto"
