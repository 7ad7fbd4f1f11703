"""cluster.client exposes an explicit public surface, and every name in it exists."""

from __future__ import annotations

import cluster.client as client


def test_public_names_are_exported_and_resolve() -> None:
    assert sorted(client.__all__) == sorted(set(client.__all__))
    for name in client.__all__:
        assert getattr(client, name) is not None, name
    assert {"Client", "SyncClient", "ClientError", "TlsConfig", "WaitFor", "verify_account_proof"} <= set(
        client.__all__
    )


def test_every_client_error_carries_code_reason_and_message() -> None:
    err = client.BadResponseError("two results for one tx", target="127.0.0.1:1")
    assert isinstance(err, client.ClientError)
    assert (err.code.name, err.reason, err.message, err.target) == (
        "UNKNOWN",
        "BAD_RESPONSE",
        "two results for one tx",
        "127.0.0.1:1",
    )
    assert client.REASON_KEY == "clearline-reason"
