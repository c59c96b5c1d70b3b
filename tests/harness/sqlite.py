"""SQLite as the harnesses' metadata DB, made to behave like the production databases where it matters."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path


def never_reuse_trigger_ids(db: Path) -> None:
    """Make SQLite hand out trigger ids the way PostgreSQL's sequence does: never twice.

    Airflow's ``trigger.id`` is an ``INTEGER PRIMARY KEY``, which SQLite reuses once the highest row is deleted.
    Clearing a deferred task deletes its trigger row and the new try's trigger then gets the *same* id; a
    triggerer that still runs the old trigger object under that id never stops it (no ``on_kill``), and the old
    trigger's event resumes the new try (seen: the new try resumed 0.7 s after deferring, then was failed by the
    scheduler's state check). Production databases never reuse ids, so the harness rebuilds the table with
    ``AUTOINCREMENT`` right after ``airflow db migrate`` (SQLite's documented table-rebuild procedure).
    """
    conn = sqlite3.connect(str(db), isolation_level=None)
    try:
        row = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'trigger'").fetchone()
        if row is None or "AUTOINCREMENT" in row[0]:
            return
        create = row[0]
        create = re.sub(r",\s*CONSTRAINT \w+ PRIMARY KEY \(id\)(?=\s*\)\s*$)", "", create)
        create = re.sub(r"CONSTRAINT \w+ PRIMARY KEY \(id\),\s*", "", create)
        create = create.replace("id INTEGER NOT NULL,", "id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,", 1)
        create = create.replace('CREATE TABLE "trigger"', 'CREATE TABLE "trigger_e2e_rebuilt"', 1)
        if "AUTOINCREMENT" not in create or "PRIMARY KEY (id)" in create or "trigger_e2e_rebuilt" not in create:
            raise RuntimeError(f"cannot rebuild Airflow's trigger table with AUTOINCREMENT from:\n{row[0]}")
        indexes = [
            sql
            for (sql,) in conn.execute(
                "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'trigger' AND sql IS NOT NULL"
            )
        ]
        conn.execute("PRAGMA foreign_keys = OFF")
        conn.execute("BEGIN")
        conn.execute(create)
        conn.execute('INSERT INTO "trigger_e2e_rebuilt" SELECT * FROM "trigger"')
        conn.execute('DROP TABLE "trigger"')
        conn.execute('ALTER TABLE "trigger_e2e_rebuilt" RENAME TO "trigger"')
        for sql in indexes:
            conn.execute(sql)
        conn.execute("COMMIT")
    finally:
        conn.close()


def use_write_ahead_log(db: Path) -> None:
    """Switch the DB file to SQLite's write-ahead log (the setting is stored in the file, so every service gets it).

    With the default rollback journal, one writer locks out every reader: with a scheduler, a triggerer, a
    dag-processor, an api-server and task processes all on one file, a busy run (every example DAG at once) made
    calls wait past any sane timeout, and a task process that could not report its state was failed by its
    executor. With the log, readers never wait for the writer; writers still take turns (the driver's busy
    timeout, 5 s, says how long they wait for theirs).
    """
    conn = sqlite3.connect(str(db), isolation_level=None)
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise RuntimeError(f"SQLite refused the write-ahead log for {db} (journal mode {mode!r})")
    finally:
        conn.close()
