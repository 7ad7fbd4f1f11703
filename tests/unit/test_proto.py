"""The wire contract: every message round-trips, and the generated code matches the .proto files."""

from __future__ import annotations

import filecmp
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto" / "clearline" / "v1"
MODULES = sorted(p.stem for p in PROTO_DIR.glob("*.proto"))


def _message_classes() -> list[type[Message]]:
    classes: list[type[Message]] = []

    def walk(module_msgs: dict[str, Descriptor], module: object) -> None:
        for name in module_msgs:
            cls = getattr(module, name)
            classes.append(cls)
            walk(cls.DESCRIPTOR.nested_types_by_name, cls)

    for name in MODULES:
        module = importlib.import_module(f"clearline.v1.{name}_pb2")
        walk(module.DESCRIPTOR.message_types_by_name, module)
    return [c for c in classes if not c.DESCRIPTOR.GetOptions().map_entry]


_SCALARS = {
    FieldDescriptor.TYPE_BOOL: True,
    FieldDescriptor.TYPE_STRING: "text-é",
    FieldDescriptor.TYPE_BYTES: b"\x00\xffbytes",
    FieldDescriptor.TYPE_DOUBLE: 1.5,
    FieldDescriptor.TYPE_FLOAT: 2.5,
}


def _scalar(field: FieldDescriptor, seed: int) -> object:
    if field.type == FieldDescriptor.TYPE_ENUM:
        values = field.enum_type.values
        return values[-1].number
    if field.type in _SCALARS:
        return _SCALARS[field.type]
    if field.type in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32):
        return -7 - seed
    if field.type in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64):
        return -(2**40) - seed
    if field.type in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return 2**31 + seed
    return 2**63 + seed  # uint64 / fixed64: above the int64 range


def _fill(msg: Message, depth: int, oneof_choice: dict[str, str]) -> None:
    for field in msg.DESCRIPTOR.fields:
        oneof = field.containing_oneof
        if oneof is not None and oneof_choice.get(oneof.name, oneof.fields[0].name) != field.name:
            continue
        is_repeated = (
            field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
        )
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth <= 0:
                continue
            if is_repeated:
                for _ in range(2):
                    _fill(getattr(msg, field.name).add(), depth - 1, {})
            else:
                child = getattr(msg, field.name)
                _fill(child, depth - 1, {})
                child.SetInParent()
        elif is_repeated:
            getattr(msg, field.name).extend([_scalar(field, 0), _scalar(field, 1)])
        else:
            setattr(msg, field.name, _scalar(field, 0))


def _variants(cls: type[Message]) -> list[dict[str, str]]:
    """One oneof choice map per member of each oneof, so every member is exercised."""
    variants: list[dict[str, str]] = [{}]
    for oneof in cls.DESCRIPTOR.oneofs:
        variants.extend({oneof.name: f.name} for f in oneof.fields)
    return variants


ALL = _message_classes()


def test_every_proto_module_is_covered() -> None:
    assert len(MODULES) >= 7
    names = {c.DESCRIPTOR.full_name for c in ALL}
    for required in (
        "clearline.v1.SignedTx",
        "clearline.v1.TxBody",
        "clearline.v1.Receipt",
        "clearline.v1.Block",
        "clearline.v1.Header",
        "clearline.v1.Proposal",
        "clearline.v1.Vote",
        "clearline.v1.CommitCertificate",
        "clearline.v1.DuplicateVoteEvidence",
        "clearline.v1.PeerMessage",
        "clearline.v1.WalRecord",
        "clearline.v1.SubmitTxRequest",
    ):
        assert required in names


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.DESCRIPTOR.name)
def test_message_round_trips(cls: type[Message]) -> None:
    for choice in _variants(cls):
        msg = cls()
        _fill(msg, depth=3, oneof_choice=choice)
        data = msg.SerializeToString(deterministic=True)
        back = cls.FromString(data)
        assert back == msg
        assert back.SerializeToString(deterministic=True) == data
        for oneof, member in choice.items():
            assert back.WhichOneof(oneof) == member


def test_tx_body_has_one_operation_per_ledger_operation() -> None:
    from clearline.v1 import tx_pb2

    ops = {f.name for f in tx_pb2.TxBody.DESCRIPTOR.oneofs_by_name["op"].fields}
    assert ops >= {
        "create_instrument", "set_kyc", "mint", "redeem", "transfer", "freeze_account",
        "unfreeze_account", "freeze_amount", "unfreeze_amount", "pause_instrument",
        "unpause_instrument", "create_hold", "execute_hold", "release_hold", "settle",
        "forced_transfer", "recover_account", "set_limits", "grant_role", "revoke_role",
        "change_validator",
    }  # fmt: skip


def test_ledger_service_has_the_client_api() -> None:
    from clearline.v1 import ledger_api_pb2, peer_pb2

    methods = {m.name for m in ledger_api_pb2.DESCRIPTOR.services_by_name["Ledger"].methods}
    assert methods >= {
        "SubmitTx", "SubmitTxs", "GetTx", "GetAccount", "GetBlock", "GetStatus", "StreamBlocks", "SubscribeEvents",
    }  # fmt: skip
    peer = peer_pb2.DESCRIPTOR.services_by_name["Peer"]
    connect = peer.methods_by_name["Connect"]
    assert connect.client_streaming and connect.server_streaming


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    """Regenerating from the .proto files gives exactly the files in the tree."""
    subprocess.run([sys.executable, str(ROOT / "proto" / "generate.py"), str(tmp_path)], check=True)
    fresh_dir = tmp_path / "clearline" / "v1"
    fresh = sorted(p.name for p in fresh_dir.iterdir() if "_pb2" in p.name)
    present = sorted(p.name for p in PROTO_DIR.iterdir() if "_pb2" in p.name)
    assert fresh == present, "generated files differ from the .proto set: run `make proto`"
    match, mismatch, errors = filecmp.cmpfiles(fresh_dir, PROTO_DIR, fresh, shallow=False)
    assert not mismatch and not errors, f"stale generated code {mismatch + errors}: run `make proto`"
    assert len(match) == len(fresh)
