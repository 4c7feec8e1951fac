"""Transactions against the example line database, at a given rate, recording what committed.

The ``postgres`` service of ``scripts/services.sh`` holds the database ``line``
(``scripts/services.d/linedb.sql``): work orders, maintenance events, quality
results. :class:`LineDbGenerator` runs transactions against it the way a
plant's MES would (a new work order, often with its quality result or a
maintenance event; and a status change of an earlier order, a maintenance
event amended, a cancelled order or a quality result deleted),
paced to ``rate`` transactions per second over ``workers`` connections, and
records every row change that committed as a :class:`Change`: the events a
change data capture of the database must deliver.

Each transaction is one SQL statement (data-modifying CTEs), committed on its
own: one round trip. (Not pipelined: statements in one pipeline share an
implicit transaction until its sync.) A connection lost mid-statement (a
database restart) is re-established with backoff; the statement in flight
then counts as *in doubt* (it may or may not have committed; its changes are
not recorded), the rest goes on.

Command line (prints the stats as JSON)::

    python -m unsflow.testing.linedb --rate 500 --seconds 30 --workers 4 \\
        [--dsn "host=127.0.0.1 port=5442 dbname=line user=unsflow password=..."]

Without ``--dsn``, the ``dsn`` of ``.services/postgres/info.json``
(``UNSFLOW_SERVICES_DIR`` is honoured). Needs ``psycopg`` (``pip install
'unsflow[postgres]'``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from unsflow._deps import require

__all__ = ["Change", "GeneratorStats", "LineDbGenerator", "table_rows"]

TABLES = ("work_orders", "maintenance_events", "quality_results")

# One transaction. Parameters left NULL switch a part off (the WHERE of its CTE
# matches nothing); updates and deletes pick rows the generator saw committed.
_TRANSACTION = """
WITH
wo AS (
    INSERT INTO work_orders (line, product, quantity)
    VALUES (%(line)s, %(product)s, %(quantity)s)
    RETURNING id, revision),
qr AS (
    INSERT INTO quality_results (work_order_id, machine, measure, value, passed)
    SELECT id, %(machine)s, 'diameter_mm', %(value)s, %(passed)s FROM wo WHERE %(with_qr)s
    RETURNING id, revision),
me AS (
    INSERT INTO maintenance_events (machine, kind, duration_s, technician)
    SELECT %(machine)s, %(kind)s, %(duration)s, %(technician)s WHERE %(with_me)s
    RETURNING id, revision),
wo_up AS (
    UPDATE work_orders SET status = %(status)s, revision = revision + 1, updated_at = now()
    WHERE id = %(update_wo)s
    RETURNING id, revision),
me_up AS (
    UPDATE maintenance_events SET duration_s = duration_s + 60, notes = %(notes)s,
        revision = revision + 1
    WHERE id = %(update_me)s
    RETURNING id, revision),
wo_del AS (
    DELETE FROM work_orders WHERE id = %(delete_wo)s RETURNING id, revision),
qr_del AS (
    DELETE FROM quality_results WHERE id = %(delete_qr)s RETURNING id, revision)
SELECT 'work_orders', 'c', id, revision FROM wo
UNION ALL SELECT 'quality_results', 'c', id, revision FROM qr
UNION ALL SELECT 'maintenance_events', 'c', id, revision FROM me
UNION ALL SELECT 'work_orders', 'u', id, revision FROM wo_up
UNION ALL SELECT 'maintenance_events', 'u', id, revision FROM me_up
UNION ALL SELECT 'work_orders', 'd', id, revision FROM wo_del
UNION ALL SELECT 'quality_results', 'd', id, revision FROM qr_del
"""

_STATUSES = ("running", "done", "running", "done", "cancelled")
_KINDS = ("inspection", "lubrication", "repair", "calibration")


@dataclass(frozen=True, order=True)
class Change:
    """One committed row change: its table, Debezium op (c, u, d), primary key and the
    row's ``revision`` after it (of a delete: the revision the row had)."""

    table: str
    op: str
    id: int
    revision: int


@dataclass
class GeneratorStats:
    """What a run did; ``changes`` counts committed row changes by op."""

    transactions: int = 0
    in_doubt: int = 0
    reconnects: int = 0
    seconds: float = 0.0
    changes: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.transactions / self.seconds if self.seconds else 0.0


def _psycopg() -> Any:
    return require("psycopg", "postgres")


class LineDbGenerator:
    """Runs line-database transactions at ``rate`` per second (None: as fast as it can).

    ``committed`` lists every change whose transaction committed, in commit
    order per worker. Thread-safe to read after :meth:`run` returns.
    """

    def __init__(self, dsn: str, *, rate: float | None = None, workers: int = 1,
                 seed: int = 0) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("rate must be positive (or None)")
        self.dsn = dsn
        self.rate = rate
        self.workers = max(1, workers)
        self.seed = seed
        self.committed: list[Change] = []
        self.stats = GeneratorStats()
        self._lock = threading.Lock()
        self._live: dict[str, list[int]] = {t: [] for t in TABLES}

    def run(self, *, transactions: int | None = None, seconds: float | None = None,
            stop: threading.Event | None = None) -> GeneratorStats:
        """Until ``transactions`` committed (or were in doubt), ``seconds`` passed, or ``stop``."""
        if transactions is None and seconds is None and stop is None:
            raise ValueError("give transactions, seconds or stop")
        stop = stop or threading.Event()
        deadline = time.monotonic() + seconds if seconds is not None else None
        budget = [transactions]
        started = time.monotonic()
        errors: list[BaseException] = []
        threads = [threading.Thread(target=self._worker, name=f"linedb-{i}",
                                    args=(i, stop, deadline, budget, errors), daemon=True)
                   for i in range(self.workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.stats.seconds = time.monotonic() - started
        if errors:
            raise errors[0]
        return self.stats

    def _take(self, budget: list[int | None]) -> bool:
        with self._lock:
            if budget[0] is None:
                return True
            if budget[0] <= 0:
                return False
            budget[0] -= 1
            return True

    def _worker(self, index: int, stop: threading.Event, deadline: float | None,
                budget: list[int | None], errors: list[BaseException]) -> None:
        psycopg = _psycopg()
        rng = random.Random(self.seed * 1000 + index)
        per_worker = self.rate / self.workers if self.rate else None
        conn = None
        n = 0
        started = time.monotonic()
        try:
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                if conn is None:
                    conn = self._connect(psycopg, stop, deadline)
                    if conn is None:
                        return
                if per_worker is not None:
                    wait = started + n / per_worker - time.monotonic()
                    if wait > 0:
                        stop.wait(wait)
                        continue
                if not self._take(budget):
                    return
                n += 1
                try:
                    rows = conn.execute(_TRANSACTION, self._params(rng)).fetchall()
                except psycopg.OperationalError:
                    if not conn.broken:
                        raise  # not a lost connection: a bug in the transaction
                    with self._lock:
                        self.stats.in_doubt += 1
                        self.stats.reconnects += 1
                    conn.close()
                    conn = None
                    continue
                self._record(rows)
        except BaseException as exc:  # noqa: BLE001 - re-raised by run()
            errors.append(exc)
            stop.set()
        finally:
            if conn is not None:
                conn.close()

    def _connect(self, psycopg: Any, stop: threading.Event, deadline: float | None) -> Any:
        delay = 0.1
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            try:
                return psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
            except psycopg.OperationalError:
                stop.wait(delay)
                delay = min(delay * 2, 2.0)
        return None

    def _params(self, rng: random.Random) -> dict[str, Any]:
        # At most one existing row per transaction: two transactions that each lock two
        # existing rows could take them in opposite orders and deadlock.
        update_wo = delete_wo = update_me = delete_qr = None
        pick = rng.random()
        with self._lock:
            orders = self._live["work_orders"]
            events = self._live["maintenance_events"]
            results = self._live["quality_results"]
            if pick < 0.40 and orders:
                update_wo = rng.choice(orders)
            elif pick < 0.48 and orders:
                delete_wo = orders.pop(rng.randrange(len(orders)))
            elif pick < 0.56 and events:
                update_me = rng.choice(events)
            elif pick < 0.60 and results:
                delete_qr = results.pop(rng.randrange(len(results)))
        machine = f"press-{rng.randint(1, 12)}"
        return {
            "line": f"line{rng.randint(1, 4)}", "product": f"P-{rng.randint(100, 140)}",
            "quantity": rng.randint(1, 500), "machine": machine,
            "value": round(rng.gauss(12.0, 0.05), 4), "passed": rng.random() < 0.97,
            "with_qr": rng.random() < 0.5, "with_me": rng.random() < 0.2,
            "kind": rng.choice(_KINDS), "duration": rng.randint(60, 3600),
            "technician": rng.choice(("kim", "ana", "lee", None)),
            "status": rng.choice(_STATUSES), "update_wo": update_wo, "update_me": update_me,
            "notes": rng.choice(("checked", "belt replaced", None)),
            "delete_wo": delete_wo, "delete_qr": delete_qr,
        }

    def _record(self, rows: list[tuple[str, str, int, int]]) -> None:
        changes = [Change(t, op, int(i), int(r)) for t, op, i, r in rows]
        with self._lock:
            self.committed.extend(changes)
            self.stats.transactions += 1
            for c in changes:
                self.stats.changes[c.op] = self.stats.changes.get(c.op, 0) + 1
                if c.op == "c":
                    self._live[c.table].append(c.id)


def table_rows(dsn: str, table: str) -> list[dict[str, Any]]:
    """Every row of ``table`` (one of the line database's), as dicts, by primary key."""
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r} (expected one of {', '.join(TABLES)})")
    psycopg = _psycopg()
    from psycopg.rows import dict_row

    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        return list(conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall())


def _default_dsn() -> str:
    root = Path(os.environ.get("UNSFLOW_SERVICES_DIR") or ".services")
    info = root / "postgres" / "info.json"
    try:
        return str(json.loads(info.read_text())["dsn"])
    except (OSError, ValueError, KeyError) as exc:
        raise SystemExit(f"no --dsn and no readable {info} ({exc}); start the database with "
                         "scripts/services.sh up postgres") from None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m unsflow.testing.linedb",
                                 description="Run line-database transactions at a given rate.")
    ap.add_argument("--dsn", help="libpq connection string (default: .services/postgres/info.json)")
    ap.add_argument("--rate", type=float, default=100.0, help="transactions per second (0: no limit)")
    ap.add_argument("--seconds", type=float, default=None, help="stop after this long")
    ap.add_argument("--transactions", type=int, default=None, help="stop after this many")
    ap.add_argument("--workers", type=int, default=4, help="connections")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.seconds is None and args.transactions is None:
        args.seconds = 10.0
    gen = LineDbGenerator(args.dsn or _default_dsn(), rate=args.rate or None,
                          workers=args.workers, seed=args.seed)
    stats = gen.run(transactions=args.transactions, seconds=args.seconds)
    print(json.dumps({**asdict(stats), "rate": round(stats.rate, 1)}))


if __name__ == "__main__":
    main()
