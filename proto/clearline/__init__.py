"""Clearline wire contract: generated protobuf and gRPC modules (see proto/generate.py)."""
