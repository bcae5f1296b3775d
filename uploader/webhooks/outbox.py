"""The webhook outbox: each event is a row written in the transaction of the change it
reports, and delivered from the table.

A state change and its event commit together or not at all, so no crash, broker outage
or receiver outage loses one. A dispatcher claims due rows with a lease (``FOR UPDATE
SKIP LOCKED`` on PostgreSQL: two dispatchers never take the same row), POSTs them, and
records the outcome. Only the oldest undelivered event of an upload is ever due, so an
upload's events arrive in the order they happened. A row keeps its id (the
``X-Uploader-Delivery`` header) across every attempt; after the last attempt it is
dead-lettered, until ``uploader webhooks retry`` sends it again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    bindparam,
    delete,
    exists,
    literal_column,
    null,
    or_,
    select,
    update,
)
from sqlalchemy import insert as sql_insert

from uploader.db.driver import DriverStatement
from uploader.db.models import ConcatRole, Upload, utcnow, webhook_outbox
from uploader.kit.ids import CountedIds
from uploader.observability import tracing
from uploader.observability.request_ids import current_request_id

WEBHOOK_EVENTS = frozenset({"upload.received", "upload.ready", "upload.failed", "upload.rejected"})
PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"
STATUSES = (PENDING, DELIVERED, DEAD)

_c = webhook_outbox.c
_INSERTED = (
    "id",
    "upload_id",
    "owner",
    "type",
    "body",
    "created_at",
    "status",
    "attempts",
    "next_attempt_at",
    "request_id",
    "traceparent",
)
_INSERT = DriverStatement(sql_insert(webhook_outbox), {name: _c[name] for name in _INSERTED})


# Delivery ids: a fresh random id for every event cost more than its insert.
_delivery_ids = CountedIds()


# One encoder for every body (``json.dumps`` with options builds a new one each call).
_compact_json = json.JSONEncoder(separators=(",", ":")).encode


def new_delivery_id() -> str:
    return f"whd_{_delivery_ids()}"


def record(connection: Connection, upload: Upload, events: list[tuple[str, dict[str, Any]]]) -> None:
    """Write webhook events (type and data, in the order they happened) into the caller's
    transaction. Parts of a concatenation are not reported: they are an implementation
    detail of their final upload."""
    if upload.concat_role == ConcatRole.PARTIAL:
        return
    now = utcnow()
    created_at = now.isoformat()
    request_id = current_request_id.get()
    traceparent = tracing.current_traceparent()
    rows = []
    for event_type, data in events:
        if event_type not in WEBHOOK_EVENTS:
            continue
        delivery_id = new_delivery_id()
        # The body every attempt POSTs, rendered once: a delivery neither decodes nor
        # encodes it again.
        body = {
            "id": delivery_id,
            "type": event_type,
            "created_at": created_at,
            "upload_id": upload.id,
            "owner": upload.owner,
            "data": data,
        }
        rows.append(
            {
                "id": delivery_id,
                "upload_id": upload.id,
                "owner": upload.owner,
                "type": event_type,
                "body": _compact_json(body),
                "created_at": now,
                "status": PENDING,
                "attempts": 0,
                "next_attempt_at": now,
                "request_id": request_id,
                "traceparent": traceparent,
            }
        )
    if rows:
        _INSERT.execute_many(connection, rows)


@dataclass(frozen=True, slots=True)
class Delivery:
    """A delivery as ``uploader webhooks list`` and the deliveries route show it."""

    seq: int
    id: str
    upload_id: str
    owner: str
    type: str
    created_at: datetime
    status: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    delivered_at: datetime | None
    request_id: str | None  # of the request that caused the event

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "upload_id": self.upload_id,
            "owner": self.owner,
            "status": self.status,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "created_at": self.created_at.isoformat(),
            "next_attempt_at": self.next_attempt_at.isoformat() if self.status == PENDING else None,
            "delivered_at": self.delivered_at.isoformat() if self.delivered_at else None,
            "request_id": self.request_id,
        }


_FIELDS = (
    _c.seq,
    _c.id,
    _c.upload_id,
    _c.owner,
    _c.type,
    _c.created_at,
    _c.status,
    _c.attempts,
    _c.next_attempt_at,
    _c.last_error,
    _c.delivered_at,
    _c.request_id,
)


def _delivery(row: Any) -> Delivery:
    return Delivery(*row)  # the columns of ``_FIELDS``, in the dataclass's order


@dataclass(frozen=True, slots=True)
class Claimed:
    """What a dispatcher needs of a claimed event to POST it and record the outcome."""

    seq: int
    id: str
    upload_id: str
    type: str
    body: str  # the JSON POSTed, the same on every attempt
    attempts: int
    request_id: str | None  # sent as X-Request-ID
    traceparent: str | None  # the trace it belongs to, when traced


_CLAIMED = (_c.seq, _c.id, _c.upload_id, _c.type, _c.body, _c.attempts, _c.request_id, _c.traceparent)


_earlier = webhook_outbox.alias("earlier")
_free = or_(_c.lease_until.is_(None), _c.lease_until < bindparam("now"))


def _pending_by_any_index_but_status(status: Any) -> Any:
    """``status`` is pending, compared as ``status || ''``, which no index serves: the
    planner reads the rows through another index (a planner that took the status index
    for them read every pending event per candidate)."""
    return status.concat(literal_column("''")) == PENDING


# Only an upload's oldest undelivered event is a head: its events go out in order (the
# earlier events looked up through ``(upload_id, seq)``).
_HEAD = ~exists().where(
    and_(
        _earlier.c.upload_id == _c.upload_id,
        _pending_by_any_index_but_status(_earlier.c.status),
        _earlier.c.seq < _c.seq,
    )
)


def _heads_by_due_time(column: Any) -> Any:
    """``column`` of the first ``batch`` heads in the order they fell due: walked on
    ``(status, next_attempt_at)`` and ended at the batch, where an order by ``seq`` sorted
    every due event first (26 to 50 ms a claim on SQLite with 40,000 due after an outage,
    and a drain that took time growing with the backlog's square)."""
    return (
        select(column)
        .where(_c.status == PENDING, _c.next_attempt_at <= bindparam("now"), _free, _HEAD)
        .order_by(_c.next_attempt_at)
        .limit(bindparam("batch"))
    )


_DUE = _heads_by_due_time(_c.seq).with_for_update(skip_locked=True)
_CLAIM = (
    update(webhook_outbox)
    .where(_c.seq.in_(_DUE.scalar_subquery()), _free)
    .values(lease_until=bindparam("lease_until"))
    .returning(*_CLAIMED)
)
# The events after those heads, of the same uploads: no other dispatcher can take them
# while their head is pending, and they go out right after it, in order. (A statement of
# its own: the heads are claimed first, with SKIP LOCKED on PostgreSQL, and only their
# uploads' other events after that.)
_CLAIM_FOLLOWERS = (
    update(webhook_outbox)
    .where(
        _c.upload_id.in_(bindparam("uploads", expanding=True)),
        _c.status == PENDING,
        _c.seq.not_in(bindparam("heads", expanding=True)),
        _free,
    )
    .values(lease_until=bindparam("lease_until"))
    .returning(*_CLAIMED)
)


# SQLite (one writer at a time, no SKIP LOCKED) claims in one statement, on the driver:
# the first ``batch`` heads by due time, as on PostgreSQL, and with them every free
# undelivered event of their uploads, read through ``(upload_id, seq)`` from the list of
# uploads (not by reading every pending row to match the list). A claim reads about as
# many rows as it takes, however long the backlog: a quarter of a ms with 40,000 due.
_CLAIM_IN_ONE = DriverStatement(
    update(webhook_outbox)
    .where(
        _c.upload_id.in_(_heads_by_due_time(_c.upload_id).scalar_subquery()),
        _pending_by_any_index_but_status(_c.status),
        _free,
    )
    .values(lease_until=bindparam("lease_until"))
    .returning(*_CLAIMED),
    {"now": _c.next_attempt_at, "lease_until": _c.lease_until, "batch": _c.attempts},
)


def claim(connection: Connection, batch: int, lease_seconds: float) -> tuple[list[Claimed], bool]:
    """Take up to ``batch`` due events, each the oldest undelivered one of its upload,
    and the events that follow them, for ``lease_seconds``; in order. Also whether more
    may be due now."""
    now = utcnow()
    params = {"now": now, "batch": batch, "lease_until": now + timedelta(seconds=lease_seconds)}
    if connection.dialect.name == "sqlite":
        rows = _CLAIM_IN_ONE.rows(connection, params)
        claimed = sorted((Claimed(*row) for row in rows), key=lambda d: d.seq)
        return claimed, len({d.upload_id for d in claimed}) == batch
    heads = [Claimed(*row) for row in connection.execute(_CLAIM, params)]
    if not heads:
        return [], False
    followers = connection.execute(
        _CLAIM_FOLLOWERS,
        {**params, "uploads": sorted({d.upload_id for d in heads}), "heads": [d.seq for d in heads]},
    )
    claimed = sorted([*heads, *(Claimed(*row) for row in followers)], key=lambda d: d.seq)
    # On PostgreSQL a short batch may only mean that another dispatcher holds the rest
    # (SKIP LOCKED): keep claiming until a claim finds nothing.
    return claimed, len(heads) == batch or connection.dialect.name == "postgresql"


SKIPPED = "skipped"  # not tried: an earlier event of its upload failed in the same batch
# Row by row, in one driver call on SQLite (an expanding IN list went through
# SQLAlchemy's whole execution).
_DELIVERED = DriverStatement(
    update(webhook_outbox)
    .where(_c.seq == bindparam("row"))
    .values(
        status=literal_column(f"'{DELIVERED}'"),
        delivered_at=bindparam("now"),
        last_error=null(),
        lease_until=null(),
        attempts=_c.attempts + literal_column("1"),
    ),
    {"row": _c.seq, "now": _c.delivered_at},
)


def settle(
    connection: Connection,
    outcomes: list[tuple[Claimed, str | None]],
    max_attempts: int,
    backoff: Any,
) -> None:
    """Record each claimed delivery's outcome: ``None`` delivered, ``SKIPPED`` not tried
    (released, and due when the failed event before it is tried again), else the error:
    tried again after ``backoff(attempts)`` seconds, or dead once ``max_attempts`` were
    made."""
    now = utcnow()
    delivered = [{"row": d.seq, "now": now} for d, error in outcomes if error is None]
    if delivered:
        _DELIVERED.execute_many(connection, delivered)
    retried_at: dict[str, datetime] = {}  # by upload: when its failed event goes again
    for delivery, error in outcomes:
        if error is None or error == SKIPPED:
            continue
        attempts = delivery.attempts + 1
        values: dict[str, Any] = {"lease_until": None, "attempts": attempts, "last_error": error[:2000]}
        if attempts >= max_attempts:
            values["status"] = DEAD
        else:
            values["next_attempt_at"] = retried_at[delivery.upload_id] = now + timedelta(
                seconds=backoff(attempts)
            )
        connection.execute(update(webhook_outbox).where(_c.seq == delivery.seq).values(**values))
    # An event that waits behind a failed one is not due before it: a claim's walk of due
    # heads does not step over it at every poll of a receiver's outage.
    skipped: dict[datetime | None, list[int]] = {}
    for delivery, error in outcomes:
        if error == SKIPPED:
            skipped.setdefault(retried_at.get(delivery.upload_id), []).append(delivery.seq)
    for due_at, seqs in skipped.items():
        values = {"lease_until": None} if due_at is None else {"lease_until": None, "next_attempt_at": due_at}
        connection.execute(update(webhook_outbox).where(_c.seq.in_(seqs)).values(**values))


def retry(connection: Connection, delivery_id: str | None, all_dead: bool = False) -> int:
    """Send again: one delivery by id (whatever became of it), or every dead one."""
    statement = update(webhook_outbox).values(
        status=PENDING, attempts=0, next_attempt_at=utcnow(), lease_until=None
    )
    if delivery_id is not None:
        statement = statement.where(_c.id == delivery_id)
    elif all_dead:
        statement = statement.where(_c.status == DEAD)
    else:
        return 0
    return int(connection.execute(statement).rowcount)


def page(
    connection: Connection,
    *,
    status: str | None = None,
    upload_id: str | None = None,
    before: int | None = None,
    limit: int = 100,
) -> list[Delivery]:
    """Deliveries newest first (``before``: a ``seq`` cursor)."""
    query = select(*_FIELDS).order_by(_c.seq.desc()).limit(limit)
    if status is not None:
        query = query.where(_c.status == status)
    if upload_id is not None:
        query = query.where(_c.upload_id == upload_id)
    if before is not None:
        query = query.where(_c.seq < before)
    return [_delivery(row) for row in connection.execute(query)]


def prune_delivered(connection: Connection, before: datetime) -> int:
    """Delete deliveries made before ``before`` (dead ones stay, to be retried)."""
    result = connection.execute(
        delete(webhook_outbox).where(_c.status == DELIVERED, _c.delivered_at < before)
    )
    return int(result.rowcount)
