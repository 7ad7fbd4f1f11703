"""The client service: the Ledger API's implementation (node/network/api.py decodes and validates
requests, then calls this), with the waiters of `SubmitTx(wait=COMMITTED)` and the block and event
streams.

It hears of commits through `on_commit` (a listener of the consensus driver): waiters get their
receipts and streams wake up; the commit path never touches a client's future itself. Reads come
from the committed ledger and the block store, never from a block in progress, and each is checked
against node/access.py's rules for the caller's identity (node/auth.py) before anything is read
out: a denied read and a read of something that does not exist answer alike.

A pruning node (node/pruning.py) keeps blocks from its base height on: every read of a height below
it (a block, a block stream or event subscription from there, a statement from there), or of a block
hash or transaction it cannot find, answers `BelowBase` (OUT_OF_RANGE, BELOW_BASE_HEIGHT) naming the
base. Pruning runs in another thread, so a read that finds something missing, or may have read half
a block, looks at the base again before it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from clearline.v1 import ledger_api_pb2, receipt_pb2, state_pb2
from node import access, blocks, crypto, statement
from node.access import AccountView
from node.admission import is_observer_account
from node.auth import Identity
from node.chain import Chain
from node.clock import Clock, now_ms
from node.config import ApiConfig
from node.errors import ApiError, BelowBase, quote
from node.execution import Committed
from node.ledger import Ledger
from node.ledger.state import ACCOUNT, HOLD, INSTR
from node.mempool import CancelRefused, Dropped, Mempool, MempoolFull
from node.storage import NodeStore, StoreCorruptError
from node.txs import TxRejected

log = logging.getLogger("clearline.service")
VERSION = "0.1.0"
Waiter = asyncio.Future[tuple[receipt_pb2.Receipt, int]]
_T = TypeVar("_T")

# GetStatement: entries per page by default and at most, and the most transactions one statement
# reads (the account's history from the range's start to the head).
STATEMENT_PAGE = 1000
STATEMENT_MAX_PAGE = 10_000
STATEMENT_MAX_SCAN = 200_000
# ListHolds and ListAccounts: entries per page by default and at most, and the most state records one
# call decodes (the scan runs on the event loop: about 10 ms per thousand records).
LIST_PAGE = 1000
LIST_MAX_SCAN = 5000
_MAX_TOKEN_KEY = 256


def _page_token(key: tuple[int, int, int]) -> str:
    return "{}.{}.{}".format(*key)


def _parse_page_token(token: str) -> tuple[int, int, int]:
    """The (height, tx index, entry) after which a page starts; (0, 0, -1) for the first page."""
    if not token:
        return (0, 0, -1)
    parts = token.split(".")
    if len(parts) != 3 or not all(p.isdigit() and len(p) <= 20 for p in parts):
        raise ApiError(
            "INVALID_ARGUMENT", "BAD_PAGE_TOKEN", f"page_token {quote(token)} is not one this node gave"
        )
    h, i, k = (int(p) for p in parts)
    return (h, i, k)


def _parse_key_token(token: str) -> bytes:
    """The state key (after its prefix) a ListHolds or ListAccounts page starts after."""
    try:
        key = bytes.fromhex(token)
    except ValueError:
        key = b""
    if not key or len(key) > _MAX_TOKEN_KEY:
        raise ApiError(
            "INVALID_ARGUMENT", "BAD_PAGE_TOKEN", f"page_token {quote(token)} is not one this node gave"
        )
    return key


class ClientService:
    """Implements node.network.api.NodeApi."""

    def __init__(
        self,
        *,
        cfg: ApiConfig,
        moniker: str,
        key: crypto.SigningKey,
        chain: Chain,
        ledger: Ledger,
        store: NodeStore,
        mempool: Mempool,
        clock: Clock,
        consensus_state: Callable[[], tuple[int, str]],
        peers: Callable[[], int],
        syncing: Callable[[], bool],
    ) -> None:
        self._cfg = cfg
        self._moniker = moniker
        self._address = key.address
        self._chain = chain
        self._ledger = ledger
        self._store = store
        self.mempool = mempool
        self._clock = clock
        self._consensus_state = consensus_state
        self._peers = peers
        self._syncing = syncing
        self._waiters: dict[bytes, list[Waiter]] = {}
        self._streams: set[asyncio.Queue[int]] = set()
        self.started = False
        mempool.on_dropped = self._on_dropped

    # --- identities -------------------------------------------------------------------------------

    @property
    def chain_id(self) -> str:
        return self._chain.chain_id

    def now_ms(self) -> int:
        return now_ms(self._clock)

    def identity_of(self, public_key: bytes) -> Identity | None:
        """Who holds public_key: this node, a validator of the next height's set or an admitted
        observer (node identities), or an open account whose current key it is."""
        address = crypto.address_of(public_key)
        if address == self._address:
            return Identity(address, public_key, frozenset(), node=True)
        chain = self._chain
        if any(v.public_key == public_key for v in chain.validator_set(chain.height + 1).validators):
            return Identity(address, public_key, frozenset(), node=True)
        account = self._ledger.get_account_record(address)
        if account is None or account.closed or account.public_key != public_key:
            return None
        return Identity(address, public_key, account.roles, node=is_observer_account(account))

    # --- commits ----------------------------------------------------------------------------------

    def on_commit(self, committed: Committed) -> None:
        for receipt in committed.receipts:
            for fut in self._waiters.pop(receipt.tx_hash, []):
                if not fut.done():
                    fut.set_result((receipt, committed.height))
        for q in list(self._streams):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(committed.height)

    def _on_dropped(self, tx_hash: bytes, why: Dropped) -> None:
        """A transaction left the mempool uncommitted: whoever waits for its commit hears why now."""
        for fut in self._waiters.pop(tx_hash, []):
            if not fut.done():
                fut.set_exception(ApiError("ABORTED", f"TX_{why.reason}", f"dropped: {why.message}"))

    # --- submitting -------------------------------------------------------------------------------

    def _committed_result(self, tx_hash: bytes) -> ledger_api_pb2.SubmitTxResult | None:
        loc = self._store.tx_location(tx_hash)
        if loc is None:
            return None
        receipt = self._store.load_receipt(tx_hash)
        return ledger_api_pb2.SubmitTxResult(tx_hash=tx_hash, accepted=True, receipt=receipt, height=loc[0])

    async def submit(
        self, raws: list[bytes], wait: int, timeout_s: float | None
    ) -> list[ledger_api_pb2.SubmitTxResult]:
        if not self.started:
            raise ApiError("UNAVAILABLE", "STARTING", "the node is starting")
        try:
            admitted = await self.mempool.admit(raws, from_client=True)
        except MempoolFull as exc:
            raise ApiError("RESOURCE_EXHAUSTED", exc.reason, exc.message) from None
        results: list[ledger_api_pb2.SubmitTxResult] = []
        waits: list[tuple[int, Waiter]] = []
        loop = asyncio.get_running_loop()
        for i, a in enumerate(admitted):
            if not a.accepted:
                committed = self._committed_result(a.tx_hash)
                if committed is not None:  # a resubmission of a committed transaction: idempotent
                    results.append(committed)
                    continue
                results.append(
                    ledger_api_pb2.SubmitTxResult(
                        tx_hash=a.tx_hash,
                        accepted=False,
                        status=receipt_pb2.TxStatus.ValueType(a.status),
                        message=a.message,
                        receipt=a.receipt,
                    )
                )
                continue
            result = ledger_api_pb2.SubmitTxResult(
                tx_hash=a.tx_hash,
                accepted=True,
                status=receipt_pb2.TX_STATUS_OK,
                replaced=a.replaced,
            )
            if wait == ledger_api_pb2.WAIT_FOR_CHECKED and a.receipt is not None:
                result.receipt.CopyFrom(a.receipt)
            if wait == ledger_api_pb2.WAIT_FOR_COMMITTED:
                fut: Waiter = loop.create_future()
                self._waiters.setdefault(a.tx_hash, []).append(fut)
                waits.append((i, fut))
            results.append(result)
        if waits:
            timeout = timeout_s if timeout_s is not None else self._cfg.default_commit_timeout_s
            await self._await_commits(results, waits, max(0.0, timeout - 0.05), single=len(raws) == 1)
        return results

    async def _await_commits(
        self,
        results: list[ledger_api_pb2.SubmitTxResult],
        waits: list[tuple[int, Waiter]],
        seconds: float,
        single: bool,
    ) -> None:
        done, _pending = await asyncio.wait([f for _, f in waits], timeout=seconds)
        timed_out = False
        for i, fut in waits:
            if fut in done and (dropped := fut.exception()) is not None:
                if single:
                    raise dropped
                results[i].status = receipt_pb2.TX_STATUS_DROPPED
                results[i].message = dropped.message if isinstance(dropped, ApiError) else str(dropped)
                continue
            if fut in done:
                receipt, height = fut.result()
                results[i].receipt.CopyFrom(receipt)
                results[i].height = height
                results[i].status = receipt.status
                continue
            timed_out = True
            fut.cancel()
            waiters = self._waiters.get(results[i].tx_hash, [])
            if fut in waiters:
                waiters.remove(fut)
            if not waiters:
                self._waiters.pop(results[i].tx_hash, None)
        if timed_out and single:
            raise ApiError(
                "DEADLINE_EXCEEDED",
                "COMMIT_TIMEOUT",
                "accepted but not committed before the deadline; query GetTx",
            )

    async def check_tx(self, raw: bytes) -> ledger_api_pb2.SubmitTxResponse:
        item = (await self.mempool.verify_many([raw]))[0]
        if isinstance(item, TxRejected):
            raise ApiError.for_status(item.status, item.message)
        receipt = self._ledger.check_tx(item, time_ms=now_ms(self._clock))
        return ledger_api_pb2.SubmitTxResponse(
            tx_hash=item.tx_hash, accepted=receipt.status == receipt_pb2.TX_STATUS_OK, receipt=receipt
        )

    # --- reads ------------------------------------------------------------------------------------

    def get_tx(self, who: Identity, tx_hash: bytes) -> ledger_api_pb2.GetTxResponse:
        loc = self._store.tx_location(tx_hash)
        if loc is not None:
            try:
                raw: bytes | None = self._store.load_tx(tx_hash) or b""
            except StoreCorruptError:
                if loc[0] >= self._store.base_height():
                    raise
                raw = None  # pruned since its location was read
            receipt = self._store.load_receipt(tx_hash)
            if raw is None or loc[0] < self._store.base_height():
                if not access.sees_everything(who):
                    raise self._tx_denied()
                raise BelowBase(self._store.base_height(), f"transaction {tx_hash.hex()}")
            if not access.tx_visible(who, access.tx_signers(raw), receipt):
                raise self._tx_denied()
            return ledger_api_pb2.GetTxResponse(
                state=ledger_api_pb2.TX_STATE_COMMITTED, receipt=receipt, height=loc[0], index=loc[1], tx=raw
            )
        pending = self.mempool.get(tx_hash)
        if pending is not None and access.tx_visible(who, pending.signers, None):
            return ledger_api_pb2.GetTxResponse(state=ledger_api_pb2.TX_STATE_PENDING, tx=pending.raw)
        gone = self.mempool.dropped(tx_hash) if pending is None else None
        if gone is not None and access.tx_visible(who, gone.signers, None):
            return ledger_api_pb2.GetTxResponse(
                state=ledger_api_pb2.TX_STATE_DROPPED,
                dropped_reason=gone.reason,
                message=gone.message,
                replaced_by=gone.replaced_by,
            )
        if not access.sees_everything(who):
            raise self._tx_denied()
        base = self._store.base_height()
        if base > 1 and pending is None and gone is None:
            raise BelowBase(
                base, f"transaction {tx_hash.hex()} is neither in a block this node keeps nor pending here"
            )
        raise ApiError(
            "NOT_FOUND", "UNKNOWN_TX", f"transaction {tx_hash.hex()} is neither committed nor pending here"
        )

    def _tx_denied(self) -> ApiError:
        """The one answer to a transaction the caller may not read, whether or not it exists; on a
        pruning node it names the base, since the node cannot tell which its older ones were."""
        base = self._store.base_height()
        if base > 1:
            return ApiError(
                "PERMISSION_DENIED",
                "PERMISSION_DENIED",
                f"this identity may not read that transaction, or it is in a block below height {base}, "
                "the lowest this node keeps",
            )
        return access.denied("transaction")

    def get_account(self, who: Identity, address: bytes, prove: bool) -> ledger_api_pb2.GetAccountResponse:
        chain = self._chain
        account = self._ledger.get_account(address)
        view = access.account_view(who, account)
        if view is AccountView.NONE or (prove and view is not AccountView.WHOLE):
            raise access.denied("account")
        resp = ledger_api_pb2.GetAccountResponse(exists=account is not None, height=chain.height)
        if account is not None and view is AccountView.ISSUER_PART:
            resp.account.CopyFrom(access.issuer_part(account, who.address))
            resp.holds.extend(h for h in self._ledger.list_holds(address) if access.hold_visible(who, h))
        elif account is not None:
            resp.account.CopyFrom(account)
            resp.holds.extend(self._ledger.list_holds(address))
        elif not prove:
            raise ApiError("NOT_FOUND", "UNKNOWN_ACCOUNT", f"no account {address.hex()}")
        if prove:
            if chain.height == 0 or chain.last_header is None:
                raise ApiError("UNAVAILABLE", "NO_BLOCKS", "no block committed yet to prove against")
            resp.proof.CopyFrom(self._ledger.prove_account(address))
            resp.header.CopyFrom(chain.last_header)
            resp.commit.CopyFrom(chain.last_commit)
            resp.validators.CopyFrom(chain.validator_set(chain.height))
        return resp

    def get_instrument(
        self, who: Identity, req: ledger_api_pb2.GetInstrumentRequest
    ) -> ledger_api_pb2.GetInstrumentResponse:
        inst = self._ledger.get_instrument(req.instrument)
        if not access.sees_everything(who) and (
            inst is None or not access.instrument_visible(who, inst, self._ledger.get_account(who.address))
        ):
            raise access.denied("instrument")
        if inst is None:
            raise ApiError(
                "NOT_FOUND",
                "UNKNOWN_INSTRUMENT",
                f"no instrument {quote(req.instrument.symbol)} of issuer {quote(req.instrument.issuer)}",
            )
        return ledger_api_pb2.GetInstrumentResponse(exists=True, instrument=inst, height=self._chain.height)

    def get_hold(self, who: Identity, hold_id: str) -> ledger_api_pb2.GetHoldResponse:
        hold = self._ledger.get_hold(hold_id)
        if not access.sees_everything(who) and (hold is None or not access.hold_visible(who, hold)):
            raise access.denied("hold")
        if hold is None:
            raise ApiError("NOT_FOUND", "UNKNOWN_HOLD", f"no hold {quote(hold_id)}")
        return ledger_api_pb2.GetHoldResponse(exists=True, hold=hold, height=self._chain.height)

    def get_statement(
        self, who: Identity, req: ledger_api_pb2.GetStatementRequest
    ) -> ledger_api_pb2.GetStatementResponse:
        """An account's statement in one instrument (node/statement.py). Who may read the account
        whole may read its statements; an issuer reads those in its own instruments of any holder.

        The balance now is known; the history index lists the account's transactions from the
        range's start, so closing = now - what came after the range, opening = closing - the range's
        entries. Heights past the committed head (a block being written) are left out."""
        account = self._ledger.get_account(req.account)
        view = access.account_view(who, account)
        if view is AccountView.NONE or (
            view is AccountView.ISSUER_PART and req.instrument.issuer != who.address
        ):
            raise access.denied("account")
        if account is None:
            raise ApiError("NOT_FOUND", "UNKNOWN_ACCOUNT", f"no account {req.account.hex()}")
        head = self._chain.height
        base = self._store.base_height()
        first = req.from_height or base
        last = req.to_height or head
        if first < base:
            raise BelowBase(base, f"a statement from height {first}")
        if not 1 <= first <= last <= head:
            raise ApiError(
                "INVALID_ARGUMENT", "BAD_RANGE", f"heights {first}..{last} are not within 1..{head} in order"
            )
        limit = min(req.limit or STATEMENT_PAGE, STATEMENT_MAX_PAGE)
        after = _parse_page_token(req.page_token)
        touches = self._store.account_history(req.account, from_height=first, limit=STATEMENT_MAX_SCAN)
        if len(touches) >= STATEMENT_MAX_SCAN:
            raise ApiError(
                "RESOURCE_EXHAUSTED",
                "STATEMENT_TOO_LONG",
                f"more than {STATEMENT_MAX_SCAN} transactions from height {first}: ask from a later height",
            )
        resp = ledger_api_pb2.GetStatementResponse(
            account=req.account, instrument=req.instrument, from_height=first, to_height=last
        )
        later = within = 0
        times: dict[int, int] = {}
        last_key: tuple[int, int, int] | None = None
        for height, index, tx_hash in touches:
            if height > head:
                break
            receipt = self._store.load_receipt_at(height, index)
            if receipt is None:
                continue
            for k, mv in enumerate(statement.movements(receipt, req.account, req.instrument)):
                if height > last:
                    later += mv.signed
                    continue
                within += mv.signed
                if (height, index, k) <= after or resp.next_page_token:
                    continue
                if len(resp.entries) == limit:  # another entry follows this page
                    assert last_key is not None
                    resp.next_page_token = _page_token(last_key)
                    continue
                if height not in times:
                    block = self._store.load_block(height)
                    times[height] = block.header.time_ms if block is not None else 0
                resp.entries.add(
                    height=height, time_ms=times[height], tx_hash=tx_hash, tx_index=index, kind=mv.kind,
                    counterparty=mv.counterparty, amount=mv.amount, debit=mv.debit,
                )  # fmt: skip
                last_key = (height, index, k)
        if self._store.base_height() > first:  # pruned while this statement read its history
            raise BelowBase(self._store.base_height(), f"a statement from height {first}")
        now = sum(b.amount for b in account.balances if b.instrument == req.instrument)
        closing, opening = now - later, now - later - within
        if opening < 0 or closing < 0:
            log.error(
                "statement of %s does not tie out: now %d, later %+d, within %+d",
                req.account.hex(),
                now,
                later,
                within,
            )
            raise ApiError(
                "INTERNAL", "STATEMENT_INCONSISTENT", "the account's history does not add up to its balance"
            )
        resp.opening, resp.closing = opening, closing
        return resp

    def list_instruments(self, who: Identity) -> ledger_api_pb2.ListInstrumentsResponse:
        """Every instrument the caller may read (node/access.py), by issuer and symbol."""
        caller = None if access.sees_everything(who) else self._ledger.get_account(who.address)
        resp = ledger_api_pb2.ListInstrumentsResponse(height=self._chain.height)
        # The committed state table (written with the block that the chain's height names).
        for _key, raw in self._store.state.items(INSTR):
            inst = state_pb2.Instrument.FromString(raw)
            if access.sees_everything(who) or access.instrument_visible(who, inst, caller):
                resp.instruments.append(inst)
        return resp

    def list_pending(self, who: Identity, account: bytes) -> ledger_api_pb2.ListPendingResponse:
        """An account's transactions in this node's mempool: ready, or waiting for a lower nonce."""
        account = account or who.address
        if account != who.address and not access.sees_everything(who):
            raise access.denied("account's transactions")
        record = self._ledger.get_account_record(account)
        next_nonce = record.nonce if record is not None else 0
        resp = ledger_api_pb2.ListPendingResponse(
            account=account, max_wait_ms=int(self.mempool.max_wait_s * 1000)
        )
        for nonce, tx_hash, waited_s in self.mempool.pending_of(account):
            resp.txs.add(
                tx_hash=tx_hash, nonce=nonce, waiting=waited_s is not None,
                waiting_for_nonce=next_nonce if waited_s is not None else 0,
                age_ms=int(waited_s * 1000) if waited_s is not None else 0,
            )  # fmt: skip
        return resp

    def _scan(
        self, prefix: bytes, page_token: str, limit: int, pick: Callable[[bytes], _T | None]
    ) -> tuple[list[_T], str]:
        """One page of the committed state records under prefix that pick keeps, and the token of
        the next page ("" when the records are exhausted). At most LIST_MAX_SCAN records are
        decoded per call, so a page may come back short with a token to go on from."""
        after = prefix + _parse_key_token(page_token) if page_token else b""
        limit = min(limit or LIST_PAGE, LIST_PAGE)
        out: list[_T] = []
        for scanned, (key, raw) in enumerate(self._store.state.items(prefix, after=after), 1):
            item = pick(raw)
            if item is not None:
                out.append(item)
            if len(out) >= limit or scanned >= LIST_MAX_SCAN:
                return out, key[len(prefix) :].hex()
        return out, ""

    def list_holds(
        self, who: Identity, req: ledger_api_pb2.ListHoldsRequest
    ) -> ledger_api_pb2.ListHoldsResponse:
        """Holds where the account is payer, payee or notary, each only if the caller may read it
        (GetHold's rule), so listing another account's holds shows no more than asking for them."""
        account = req.account or who.address

        def pick(raw: bytes) -> state_pb2.Hold | None:
            hold = state_pb2.Hold.FromString(raw)
            if account not in (hold.payer, hold.payee, hold.notary):
                return None
            if not req.include_closed and hold.state != state_pb2.HOLD_STATE_ACTIVE:
                return None
            return hold if access.hold_visible(who, hold) else None

        holds, token = self._scan(HOLD, req.page_token, req.limit, pick)
        return ledger_api_pb2.ListHoldsResponse(holds=holds, next_page_token=token, height=self._chain.height)

    def list_accounts(
        self, who: Identity, req: ledger_api_pb2.ListAccountsRequest
    ) -> ledger_api_pb2.ListAccountsResponse:
        """An issuer's accounts: those it approved and the holders of its instruments, each as
        GetAccount would show it to the caller. Only the issuer itself, or an identity that sees
        everything, may ask."""
        issuer = req.issuer or who.address
        everything = access.sees_everything(who)
        if issuer != who.address and not everything:
            raise access.denied("issuer's accounts")

        def pick(raw: bytes) -> state_pb2.Account | None:
            account = state_pb2.Account.FromString(raw)
            if not any(a.approver == issuer for a in account.kyc_approvals) and not any(
                b.instrument.issuer == issuer for b in account.balances
            ):
                return None
            view = AccountView.WHOLE if everything else access.account_view(who, account)
            if view is AccountView.WHOLE:
                return account
            if view is AccountView.ISSUER_PART:
                return access.issuer_part(account, who.address)
            return None

        accounts, token = self._scan(ACCOUNT, req.page_token, req.limit, pick)
        return ledger_api_pb2.ListAccountsResponse(
            accounts=accounts, next_page_token=token, height=self._chain.height
        )

    def cancel_pending(self, who: Identity, nonces: list[int]) -> ledger_api_pb2.CancelPendingResponse:
        """Withdraw the caller's own waiting transactions from this node's mempool (all or nothing).
        The caller's identity is proved by its request token, signed by the account's key: only the
        signer can withdraw its transactions, and only its own."""
        try:
            cancelled = self.mempool.cancel(who.address, nonces)
        except CancelRefused as exc:
            code = "NOT_FOUND" if exc.reason == "NOT_PENDING" else "FAILED_PRECONDITION"
            raise ApiError(code, exc.reason, exc.message) from None
        if cancelled:
            log.info("cancelled %d waiting transactions of %s", len(cancelled), who.address.hex())
        return ledger_api_pb2.CancelPendingResponse(tx_hashes=cancelled)

    def get_validators(self, who: Identity, height: int) -> ledger_api_pb2.GetValidatorsResponse:
        """Open to every identity: the validator set is what verifies proofs and certificates."""
        h = height or self._chain.height + 1
        vs = self._store.load_validator_set(h)
        if vs is None:
            raise ApiError("NOT_FOUND", "UNKNOWN_HEIGHT", f"no validator set for height {h}")
        return ledger_api_pb2.GetValidatorsResponse(height=h, validators=vs)

    def _check_kept(self, height: int) -> None:
        """BelowBase if the block of `height` is below the base (pruned, or before a state sync)."""
        base = self._store.base_height()
        if height < base:
            raise BelowBase(base, f"block {height}")

    def _block_response(self, height: int) -> ledger_api_pb2.GetBlockResponse | None:
        """The block with its certificate and receipts; None if it is not committed yet; BelowBase
        if it is below the base, or was pruned while it was read."""
        self._check_kept(height)
        block = self._store.load_block(height)
        if block is None:
            self._check_kept(height)
            return None
        resp = ledger_api_pb2.GetBlockResponse(
            block=block,
            commit=self._store.load_commit(height),
            block_hash=self._store.load_block_hash(height) or blocks.block_hash(block.header),
            receipts=self._store.load_block_receipts(height),
            block_receipt=self._store.load_block_receipt(height),
        )
        self._check_kept(height)
        return resp

    def get_block(
        self, who: Identity, req: ledger_api_pb2.GetBlockRequest
    ) -> ledger_api_pb2.GetBlockResponse:
        if not access.blocks_visible(who):
            raise access.denied("block")
        if req.WhichOneof("by") == "hash":
            found = self._store.height_of_hash(req.hash)
            if found is None and self._store.base_height() > 1:
                raise BelowBase(self._store.base_height(), f"no block {quote(req.hash)} among those kept")
            if found is None:
                raise ApiError("NOT_FOUND", "UNKNOWN_BLOCK", f"no block {quote(req.hash)}")
            height = found
        else:
            height = req.height or self._chain.height
        resp = self._block_response(height) if height else None
        if resp is None:
            raise ApiError(
                "NOT_FOUND", "UNKNOWN_BLOCK", f"no block at height {height} (latest {self._chain.height})"
            )
        return resp

    def status(self) -> ledger_api_pb2.GetStatusResponse:
        chain = self._chain
        round_, step = self._consensus_state()
        return ledger_api_pb2.GetStatusResponse(
            chain_id=chain.chain_id,
            height=chain.height,
            round=round_,
            step=step,
            latest_block_hash=chain.last_block_hash,
            latest_block_time_ms=chain.last_header.time_ms if chain.last_header else 0,
            state_root=self._ledger.state_root,
            validators=chain.validator_set(chain.height + 1),
            peers=self._peers(),
            mempool_size=len(self.mempool),
            syncing=self._syncing(),
            node_address=self._address,
            version=VERSION,
            name=self._moniker,
            base_height=self._store.base_height(),
        )

    # --- streams ----------------------------------------------------------------------------------

    async def stream_blocks(
        self, who: Identity, from_height: int
    ) -> AsyncIterator[ledger_api_pb2.GetBlockResponse]:
        if not access.blocks_visible(who):
            raise access.denied("block stream")
        async for block in self._blocks_from(from_height):
            yield block

    async def _blocks_from(self, from_height: int) -> AsyncIterator[ledger_api_pb2.GetBlockResponse]:
        if len(self._streams) >= self._cfg.max_streams:
            raise ApiError(
                "RESOURCE_EXHAUSTED",
                "TOO_MANY_STREAMS",
                f"this node serves {self._cfg.max_streams} block and event streams already; retry later",
            )
        q: asyncio.Queue[int] = asyncio.Queue(maxsize=10_000)
        self._streams.add(q)
        try:
            # From now (0): the latest block, or the first this node will keep after a state sync.
            next_height = max(1, from_height or max(self._chain.height, self._store.base_height()))
            self._check_kept(next_height)
            while True:
                while next_height <= self._chain.height:
                    resp = self._block_response(next_height)
                    if resp is None:
                        break
                    yield resp
                    next_height += 1
                await q.get()
        finally:
            self._streams.discard(q)

    async def subscribe_events(
        self, who: Identity, req: ledger_api_pb2.SubscribeEventsRequest
    ) -> AsyncIterator[ledger_api_pb2.EventEnvelope]:
        """The events of committed blocks the caller may see (node/access.py), narrowed by the
        request's filters (a filter on another account yields only its events that the caller may
        see anyway)."""
        has_instrument = req.HasField("instrument") and bool(req.instrument.symbol)
        async for block in self._blocks_from(req.from_height):
            height = block.block.header.height
            # The block's own work (hold expiries) happened at its start, before its transactions.
            receipts = [(True, 0, block.block_receipt)] if block.HasField("block_receipt") else []
            receipts += [(False, index, receipt) for index, receipt in enumerate(block.receipts)]
            for block_level, index, receipt in receipts:
                for event in receipt.events:
                    if req.account and req.account not in event.accounts:
                        continue
                    if has_instrument and event.instrument != req.instrument:
                        continue
                    if not access.event_visible(who, event):
                        continue
                    yield ledger_api_pb2.EventEnvelope(
                        height=height,
                        tx_hash=receipt.tx_hash,
                        tx_index=index,
                        event=event,
                        block_level=block_level,
                    )
