"""A persistent face gallery: enrolled identities and their embeddings in SQLite.

SQLite is the embedded default because it needs no server, survives crashes by design and
lets several processes share one file. The file is opened in WAL mode (readers never block
the writer), every write is one ``BEGIN IMMEDIATE`` transaction, and ``synchronous=FULL``
makes a committed enrolment durable even across a power cut, so nothing acknowledged to a
client is lost. Schema::

    gallery_info(key TEXT PRIMARY KEY, value TEXT)   -- the embedder and its dimension
    faces(id INTEGER PRIMARY KEY, name TEXT, embedding BLOB, source TEXT, created REAL)

Embeddings are stored as little-endian float32 blobs of the L2-normalised vectors. The
gallery remembers which embedder wrote them: embeddings of two models are not comparable,
so opening a gallery with another embedder is an error rather than silent nonsense.

Identification scores a query against each identity by the cosine similarity of its best
enrolled embedding, as ``sightkit face identify`` does (:meth:`sightkit.tasks.FaceGallery.search`),
so that the server and the command line decide alike on the same faces. The embeddings are
cached in memory and reread when the data changed, by this process or (seen through SQLite's
``PRAGMA data_version``) by another.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

#: Longest identity name accepted.
MAX_NAME_LENGTH = 128

_SCHEMA = """
CREATE TABLE IF NOT EXISTS gallery_info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS faces (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    embedding BLOB NOT NULL,
    source TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS faces_name ON faces(name);
"""


class GalleryMismatchError(ValueError):
    """The gallery file was written with another embedder or embedding size."""


#: Unicode categories refused in names: control (Cc), format (Cf: zero-width and bidirectional
#: marks that make two names look alike), surrogate, private-use and unassigned code points,
#: and the line and paragraph separators.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def check_name(name: object) -> str:
    """``name`` stripped and in Unicode normal form NFC (so that "é" typed as one code point or
    as "e" + a combining accent is one person); a ``ValueError`` for empty or over-long names
    and for control, format (e.g. zero-width or right-to-left marks) and unassigned characters."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {type(name).__name__}")
    stripped = unicodedata.normalize("NFC", name.strip())
    refused = [c for c in stripped if unicodedata.category(c) in _REFUSED_CATEGORIES]
    if not stripped or len(stripped) > MAX_NAME_LENGTH or refused:
        why = f" (holds {', '.join(f'U+{ord(c):04X}' for c in refused[:3])})" if refused else ""
        raise ValueError(
            f"name must be 1 to {MAX_NAME_LENGTH} printable characters{why}, got {name[: MAX_NAME_LENGTH + 8]!r}"
        )
    return stripped


#: Bound on how far a score computed in float16 can be from the float32 score of unit vectors:
#: rounding both inputs to float16 moves a cosine by at most ``2u`` and the float16 result by
#: ``u`` more (``u = 2**-11``); float32 accumulation adds ``D * 2**-24``, below 1e-4 for D <= 1024.
#: Four times the sum, so that every identity that can reach the top ``k`` is rescored exactly.
COARSE_MARGIN = 4 * (3 * 2**-11 + 1e-4)


@dataclass(frozen=True)
class Entries:
    """Every enrolled embedding, ready for search.

    Attributes:
        names: ``[G]`` the person of each embedding.
        vectors: ``[G, D]`` float32, unit length.
        identities: ``[I]`` the distinct names, sorted.
        owner: ``[G]`` int64, the index in ``identities`` of each embedding's person.
        coarse: ``[G, D]`` float16 copy of ``vectors``: half the bytes to stream per query, which
            is what bounds a search over a large gallery on a CPU.
    """

    names: list[str]
    vectors: Tensor
    identities: list[str]
    owner: Tensor
    coarse: Tensor

    @classmethod
    def of(cls, names: list[str], vectors: Tensor) -> Entries:
        identities = sorted(set(names))
        position = {name: k for k, name in enumerate(identities)}  # a dict: linear, not identities.index per row
        owner = torch.tensor([position[name] for name in names], dtype=torch.long)
        return cls(names, vectors, identities, owner, vectors.half())

    def best_per_identity(self, similarity: Tensor) -> Tensor:
        """``[M, I]``: for each query row of ``similarity [M, G]``, each identity's best score."""
        best = similarity.new_full((similarity.shape[0], len(self.identities)), -torch.inf)
        return best.scatter_reduce_(1, self.owner.expand_as(similarity), similarity, reduce="amax")

    def search(self, queries: Tensor, top_k: int) -> list[list[tuple[str, float]]]:
        """For each unit query ``[M, D]``, the ``top_k`` identities by the cosine of their best
        embedding with it, best first, with float32 scores.

        One float16 matrix product scores every embedding (``O(G D)`` bytes streamed once per
        query batch, no Python loop over the gallery); the identities within
        :data:`COARSE_MARGIN` of the ``top_k``-th coarse score, a handful, are then rescored in
        float32, so that the answer is the exact float32 one.
        """
        if not self.identities:
            return [[] for _ in range(queries.shape[0])]
        k = min(top_k, len(self.identities))
        coarse = self.best_per_identity((queries.half() @ self.coarse.T).float())
        floor = coarse.topk(k, dim=1).values[:, -1:] - COARSE_MARGIN
        answers = []
        for query, row, candidates in zip(queries, coarse, (coarse >= floor), strict=True):
            rows = candidates[self.owner].nonzero().squeeze(1)
            exact = row.new_full(row.shape, -torch.inf)
            exact.scatter_reduce_(0, self.owner[rows], self.vectors[rows] @ query, reduce="amax")
            scores, order = exact.topk(k)
            answers.append(
                [(self.identities[i], round(s, 6)) for s, i in zip(scores.tolist(), order.tolist(), strict=True)]
            )
        return answers


class SQLiteGallery:
    """Enrolled faces in the SQLite file ``path`` (created when missing).

    Args:
        path: the database file.
        embedder: what identifies the embedding model (e.g. its name and weights hash);
            stored on creation and checked on every later open.
        dim: embedding size ``D``.

    Raises:
        GalleryMismatchError: the file was created for another ``embedder`` or ``dim``.

    Thread-safe: the methods share one connection under a lock. Other processes may open
    the same file at the same time.
    """

    def __init__(self, path: str | Path, embedder: str, dim: int) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.embedder, self.dim = embedder, dim
        self._lock = threading.Lock()
        # isolation_level=None: no implicit transactions; writes open BEGIN IMMEDIATE themselves.
        # check_same_thread=False: the connection is used from FastAPI's worker threads, one at a time.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        with self._lock, self._transaction():
            for statement in filter(str.strip, _SCHEMA.split(";")):
                self._db.execute(statement)
            stored = dict(self._db.execute("SELECT key, value FROM gallery_info").fetchall())
            if not stored:
                self._db.executemany(
                    "INSERT INTO gallery_info(key, value) VALUES (?, ?)", [("embedder", embedder), ("dim", str(dim))]
                )
            elif stored.get("embedder") != embedder or stored.get("dim") != str(dim):
                raise GalleryMismatchError(
                    f"gallery {str(self.path)!r} holds embeddings of embedder={stored.get('embedder')!r} "
                    f"dim={stored.get('dim')}, not of embedder={embedder!r} dim={dim}; embeddings of different "
                    "models cannot be compared: use another gallery file or the embedder that made it"
                )
        self._entries: Entries | None = None
        self._data_version = -1

    # ------------------------------------------------------------------ writes

    def enroll(self, name: str, embeddings: Tensor, sources: list[str] | None = None) -> int:
        """Add ``embeddings`` ``[N, D]`` (L2-normalised here) for ``name``; returns how many the
        identity has now. All of them are added, or none if anything fails."""
        name = check_name(name)
        if not isinstance(embeddings, Tensor) or embeddings.dim() != 2 or embeddings.shape[1] != self.dim:
            got = tuple(embeddings.shape) if isinstance(embeddings, Tensor) else type(embeddings).__name__
            raise ValueError(f"embeddings must have shape [N, {self.dim}], got {got}")
        if embeddings.shape[0] == 0:
            raise ValueError("embeddings must hold at least one face, got 0")
        if not torch.isfinite(embeddings).all():
            raise ValueError("embeddings must be finite")
        sources = sources if sources is not None else [""] * embeddings.shape[0]
        if len(sources) != embeddings.shape[0]:
            raise ValueError(f"sources must have one entry per embedding ({embeddings.shape[0]}), got {len(sources)}")
        vectors = F.normalize(embeddings.detach().float().cpu(), dim=1).numpy().astype("<f4")
        now = time.time()
        rows = [(name, vector.tobytes(), source, now) for vector, source in zip(vectors, sources, strict=True)]
        with self._lock, self._transaction():
            self._db.executemany("INSERT INTO faces(name, embedding, source, created) VALUES (?, ?, ?, ?)", rows)
            (count,) = self._db.execute("SELECT COUNT(*) FROM faces WHERE name = ?", (name,)).fetchone()
            self._entries = None
        return int(count)

    def delete(self, name: str) -> int:
        """Remove every embedding of ``name``; returns how many were removed (0: unknown name)."""
        name = check_name(name)
        with self._lock, self._transaction():
            removed = self._db.execute("DELETE FROM faces WHERE name = ?", (name,)).rowcount
            self._entries = None
        return int(removed)

    # ------------------------------------------------------------------ reads

    def identities(self) -> dict[str, int]:
        """``{name: number of embeddings}``, sorted by name."""
        with self._lock:
            rows = self._db.execute("SELECT name, COUNT(*) FROM faces GROUP BY name ORDER BY name").fetchall()
        return {name: int(count) for name, count in rows}

    def entries(self) -> Entries:
        """Every enrolled embedding (cached; reread when this or another process changed the file)."""
        with self._lock:
            (version,) = self._db.execute("PRAGMA data_version").fetchone()
            if self._entries is None or version != self._data_version:
                self._entries = self._read_entries()
                self._data_version = version
            return self._entries

    def embeddings_of(self, name: str) -> Tensor:
        """The enrolled embeddings ``[N, D]`` of ``name`` (``N = 0`` when unknown)."""
        name = check_name(name)
        with self._lock:
            rows = self._db.execute("SELECT embedding FROM faces WHERE name = ? ORDER BY id", (name,)).fetchall()
        return self._vectors(blob for (blob,) in rows)

    def identify(self, embeddings: Tensor, top_k: int = 5) -> list[list[tuple[str, float]]]:
        """For each query ``[M, D]``, the ``top_k`` identities by the cosine similarity of their
        best enrolled embedding with the query, best first (:meth:`Entries.search`)."""
        if not isinstance(embeddings, Tensor) or embeddings.dim() != 2 or embeddings.shape[1] != self.dim:
            got = tuple(embeddings.shape) if isinstance(embeddings, Tensor) else type(embeddings).__name__
            raise ValueError(f"embeddings must have shape [M, {self.dim}], got {got}")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
        return self.entries().search(F.normalize(embeddings.detach().float().cpu(), dim=1), top_k)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ internals

    def _read_entries(self) -> Entries:
        rows = self._db.execute("SELECT name, embedding FROM faces ORDER BY id").fetchall()
        return Entries.of([name for name, _ in rows], self._vectors(blob for _, blob in rows))

    def _vectors(self, blobs: Iterable[bytes]) -> Tensor:
        joined = bytearray(b"".join(blobs))  # writable, as torch.from_numpy wants
        return torch.from_numpy(np.frombuffer(joined, dtype="<f4").reshape(-1, self.dim))

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error): the write lock is taken at the
    start, so two writers queue on SQLite's busy timeout instead of failing halfway."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")
