#!/bin/sh
# Regenerates the *_pb2 modules from the .proto sources beside them.
# The sources are imported by their path from the repository root, so the
# generated modules import each other as reapi.gen.*, never as top-level
# "google" or "build" packages that could clash with installed ones.
set -eu
cd "$(dirname "$0")/../.."
find reapi/gen -name '*_pb2*.py*' -delete
python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. \
    $(find reapi/gen -name '*.proto' | sort)
find reapi/gen -type d -exec touch {}/__init__.py \;
