"""The Clearline client library: build and sign every transaction, submit and wait, query, follow
the chain, and verify account proofs against a trusted validator set.

Public surface (everything else is private to this package):

    Client, SyncClient, TlsConfig, WaitFor, SubmitResult, VerifiedAccount
    ClientError, BadResponseError, ProofError, ProofFailure, TxFailedError, BuildError, TlsConfigError
    verify_account_proof, latest_agreeing
    amounts: to_minor, format_units, AmountError (amounts in an instrument's units, exactly)
    builders: make_body, sign, instrument, parse_address, ... (one function per ledger operation)
"""

from __future__ import annotations

from cluster.client import amounts, builders
from cluster.client.aio import Client
from cluster.client.amounts import AmountError, format_units, to_minor
from cluster.client.builders import (
    BuildError,
    format_address,
    format_instrument,
    instrument,
    make_body,
    parse_address,
    parse_instrument,
    sign,
)
from cluster.client.errors import (
    REASON_KEY,
    BadResponseError,
    ClientError,
    ProofError,
    ProofFailure,
    TxFailedError,
)
from cluster.client.proofs import latest_agreeing, verify_account_proof
from cluster.client.sync import SyncClient
from cluster.client.tls import TlsConfig, TlsConfigError
from cluster.client.values import SubmitResult, VerifiedAccount, WaitFor

__all__ = [
    "REASON_KEY",
    "AmountError",
    "BadResponseError",
    "BuildError",
    "Client",
    "ClientError",
    "ProofError",
    "ProofFailure",
    "SubmitResult",
    "SyncClient",
    "TlsConfig",
    "TlsConfigError",
    "TxFailedError",
    "VerifiedAccount",
    "WaitFor",
    "amounts",
    "builders",
    "format_address",
    "format_instrument",
    "format_units",
    "instrument",
    "latest_agreeing",
    "make_body",
    "parse_address",
    "parse_instrument",
    "sign",
    "to_minor",
    "verify_account_proof",
]
