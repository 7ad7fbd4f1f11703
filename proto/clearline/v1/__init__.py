"""Clearline wire contract, version 1: generated from the .proto files beside this file."""
