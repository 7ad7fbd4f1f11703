"""Who may peer with this node, and under which name: the validators of the genesis by their names,
and observers (non-voting nodes) while the committed ledger gives their key's account ROLE_OBSERVER.

The observer check reads the committed state at the moment it is asked (a connection's Hello, a
block-sync request), so an observer admitted by a GrantRole on a running network is accepted
without restarting anyone, and one whose role was revoked is refused at its next connection.

An observer's name is made here from its address (`obs-` and 12 hex digits), never taken from what
the peer sends: a peer cannot make this node log or key its tables by text of its choosing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from clearline.v1 import tx_pb2
from node.ledger.state import AccountRec

OBSERVER_NAME_PREFIX = "obs-"
# Observers connected at once (more are refused with RESOURCE_EXHAUSTED), and the bytes each one's
# send queue holds (it needs the proposals and votes of a height; beyond, the oldest are dropped
# and the observer catches up by block sync). node/budget.py counts both.
MAX_OBSERVER_PEERS = 8
OBSERVER_SEND_QUEUE_BYTES = 8 << 20
OBSERVER_NAME_HEX_DIGITS = 12


def observer_name(address: bytes) -> str:
    """The name this node gives an observer peer (bounded, derived from its address only)."""
    return OBSERVER_NAME_PREFIX + address.hex()[:OBSERVER_NAME_HEX_DIGITS]


def is_observer_account(account: AccountRec | None) -> bool:
    """An open account holding ROLE_OBSERVER."""
    return account is not None and not account.closed and tx_pb2.ROLE_OBSERVER in account.roles


class PeerNames:
    """Names the peers this node accepts: validators first, then admitted observers."""

    def __init__(
        self,
        validators: Mapping[bytes, str],
        account: Callable[[bytes], AccountRec | None] = lambda _address: None,
    ) -> None:
        """validators: address -> name (the genesis set); account: the committed account of an
        address (the ledger's get_account_record), read at each lookup."""
        self._validators = validators
        self._validator_names = frozenset(validators.values())
        self._account = account

    def name_of(self, address: bytes) -> str | None:
        """The peer's name if it may connect: a validator's, or an admitted observer's; else None."""
        name = self._validators.get(address)
        if name is not None:
            return name
        if is_observer_account(self._account(address)):
            return observer_name(address)
        return None

    def is_validator(self, name: str) -> bool:
        """Whether name is a validator's (every other accepted peer is an observer)."""
        return name in self._validator_names

    def __len__(self) -> int:
        return len(self._validators)
