"""A persistent response cache: SQLite in WAL mode, keyed by (client fingerprint, input).

The fingerprint covers the endpoint (normalised base URL), the model, the prompt template and
the label set, so another server or a changed prompt never reuses stale answers; the cache
keeps each fingerprint's description, so it says which endpoints it holds answers of. Each
batch is committed as soon as it is answered: a run that crashes or is interrupted resumes
without paying for any call twice.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path

from exotune.ea.blackbox import BlackBoxOutput
from exotune.errors import ConfigError

_SCHEMA = """CREATE TABLE IF NOT EXISTS responses (
    fingerprint TEXT NOT NULL, input_hash TEXT NOT NULL, output TEXT NOT NULL,
    PRIMARY KEY (fingerprint, input_hash));
CREATE TABLE IF NOT EXISTS endpoints (fingerprint TEXT PRIMARY KEY, description TEXT NOT NULL)"""


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ResponseCache:
    """``get_many`` / ``put_many`` over one SQLite file; safe to share between threads."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.executescript(_SCHEMA)
                conn.commit()
            except sqlite3.DatabaseError as err:
                raise ConfigError(f"response cache {self.path} is not a usable SQLite file ({err})") from err
            self._conn = conn
        return self._conn

    def get_many(self, fingerprint: str, texts: list[str]) -> dict[str, BlackBoxOutput]:
        found: dict[str, BlackBoxOutput] = {}
        unique = list(dict.fromkeys(texts))
        with self._lock:
            db = self._db()
            for i in range(0, len(unique), 500):  # SQLite limits the number of bound variables
                chunk = {_hash(t): t for t in unique[i : i + 500]}
                marks = ",".join("?" * len(chunk))
                rows = db.execute(
                    f"SELECT input_hash, output FROM responses WHERE fingerprint = ? AND input_hash IN ({marks})",
                    [fingerprint, *chunk],
                ).fetchall()
                for h, raw in rows:
                    found[chunk[h]] = BlackBoxOutput.from_json(raw)
        return found

    def put_many(self, fingerprint: str, texts: list[str], outputs: list[BlackBoxOutput]) -> None:
        rows = [(fingerprint, _hash(t), o.to_json()) for t, o in zip(texts, outputs, strict=True)]
        with self._lock:
            db = self._db()
            db.executemany("INSERT OR REPLACE INTO responses VALUES (?, ?, ?)", rows)
            db.commit()

    def record(self, fingerprint: str, description: dict) -> None:
        """Say what answers under ``fingerprint`` come from (client, endpoint, model, template)."""
        with self._lock:
            db = self._db()
            db.execute(
                "INSERT OR REPLACE INTO endpoints VALUES (?, ?)", (fingerprint, json.dumps(description, sort_keys=True))
            )
            db.commit()

    def endpoints(self) -> dict[str, dict]:
        """Fingerprint -> the description of the client whose answers are stored under it."""
        with self._lock:
            rows = self._db().execute("SELECT fingerprint, description FROM endpoints").fetchall()
        return {fp: json.loads(raw) for fp, raw in rows}

    def __len__(self) -> int:
        with self._lock:
            return self._db().execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
