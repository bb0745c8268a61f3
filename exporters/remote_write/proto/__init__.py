"""Wire schemas written in this repository from the public specs; `generate.sh` rebuilds the *_pb2 modules."""
