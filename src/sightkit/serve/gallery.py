"""A persistent face gallery: enrolled identities and their embeddings in SQLite.

SQLite is the embedded default because it needs no server, survives crashes by design and
lets several processes share one file. The file is opened in WAL mode (readers never block
the writer), every write is one ``BEGIN IMMEDIATE`` transaction, and ``synchronous=FULL``
makes a committed enrolment durable even across a power cut, so nothing acknowledged to a
client is lost. Schema::

    gallery_info(key TEXT PRIMARY KEY, value TEXT)   -- the embedder and its dimension
    faces(id INTEGER PRIMARY KEY, name TEXT, embedding BLOB, source TEXT, created REAL, weight REAL)

Embeddings are stored as little-endian float32 blobs of the L2-normalised vectors. The
gallery remembers which embedder wrote them: embeddings of two models are not comparable,
so opening a gallery with another embedder is an error rather than silent nonsense.

Identification scores a query against each identity by the cosine similarity with its
*template* (``match="template"``: the ``weight``-weighted mean of its unit embeddings,
re-normalised, :func:`sightkit.eval.pool_templates`; ``weight`` is the face's quality weight,
:func:`sightkit.eval.quality_weights`), or with its best enrolled embedding (``match="best"``),
as ``sightkit face identify`` does (:meth:`sightkit.tasks.FaceGallery.search`), so that the
server and the command line decide alike on the same faces. Templates are derived from the
rows with the rest of the cache, so an enrolment or a deletion changes them in the same step.
The embeddings are cached in memory with an index of their identities (:class:`Entries`), built
once when the file is read (not per request) and reread when the data changed, by this process or (seen
through SQLite's ``PRAGMA data_version``) by another. A search is one float16 matrix product
over every embedding and an exact float32 rescoring of the few identities near the top
(:meth:`Entries.search`): one face against 100,000 identities of 512 numbers takes about as
long as reading 100 MB from memory (``python -m benchmarks gallery_search``).
"""

from __future__ import annotations

import bisect
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

from sightkit.eval.face_template import MODES, pool_templates

#: Longest identity name accepted.
MAX_NAME_LENGTH = 128

_SCHEMA = """
CREATE TABLE IF NOT EXISTS gallery_info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS faces (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    embedding BLOB NOT NULL,
    source TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    weight REAL NOT NULL DEFAULT 1.0
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
        weights: ``[G]`` float64 pooling weight of each embedding (its face's quality weight).
        templates: ``[I, D]`` float32, unit length: each identity's weighted mean embedding.
    """

    names: list[str]
    vectors: Tensor
    identities: list[str]
    owner: Tensor
    coarse: Tensor
    weights: Tensor
    templates: Tensor

    @classmethod
    def of(cls, names: list[str], vectors: Tensor, weights: Tensor | None = None) -> Entries:
        identities = sorted(set(names))
        position = {name: k for k, name in enumerate(identities)}  # a dict: linear, not identities.index per row
        owner = torch.tensor([position[name] for name in names], dtype=torch.long)
        weights = torch.ones(len(names), dtype=torch.float64) if weights is None else weights.double()
        # Integer labels 0..I-1 keep pool_templates' identity order that of `identities`.
        templates = pool_templates(vectors, owner, weights)[0] if names else vectors.new_zeros(0, vectors.shape[1])
        return cls(names, vectors, identities, owner, vectors.half(), weights, templates)

    def template(self, name: str) -> Tensor | None:
        """The template ``[D]`` of ``name``, ``None`` when not enrolled."""
        k = bisect.bisect_left(self.identities, name)
        return self.templates[k] if k < len(self.identities) and self.identities[k] == name else None

    def best_per_identity(self, similarity: Tensor) -> Tensor:
        """``[M, I]``: for each query row of ``similarity [M, G]``, each identity's best score."""
        best = similarity.new_full((similarity.shape[0], len(self.identities)), -torch.inf)
        return best.scatter_reduce_(1, self.owner.expand_as(similarity), similarity, reduce="amax")

    def search(self, queries: Tensor, top_k: int, match: str = "template") -> list[list[tuple[str, float]]]:
        """For each unit query ``[M, D]``, the ``top_k`` identities by the cosine of their template
        (``match="template"``: one float32 matrix product with the ``[I, D]`` templates) or of their
        best embedding (``match="best"``) with it, best first, with float32 scores.

        For the best embedding, one float16 matrix product scores every embedding (``O(G D)`` bytes streamed once per
        query batch, no Python loop over the gallery); the identities within
        :data:`COARSE_MARGIN` of the ``top_k``-th coarse score, a handful, are then rescored in
        float32, so that the answer is the exact float32 one.
        """
        if not self.identities:
            return [[] for _ in range(queries.shape[0])]
        k = min(top_k, len(self.identities))
        if match == "template":
            scores, order = (queries.float() @ self.templates.T).topk(k, dim=1)
            return [
                [(self.identities[i], round(s, 6)) for s, i in zip(row_s, row_i, strict=True)]
                for row_s, row_i in zip(scores.tolist(), order.tolist(), strict=True)
            ]
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
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(faces)")}
            if "weight" not in columns:  # a gallery written before templates: every face weighs 1
                self._db.execute("ALTER TABLE faces ADD COLUMN weight REAL NOT NULL DEFAULT 1.0")
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

    def enroll(
        self, name: str, embeddings: Tensor, sources: list[str] | None = None, weights: Tensor | None = None
    ) -> int:
        """Add ``embeddings`` ``[N, D]`` (L2-normalised here) for ``name``, with their pooling
        ``weights`` ``[N]`` (finite, >= 0; ``None``: 1 each) in the person's template; returns how
        many the identity has now. All of them are added, or none if anything fails."""
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
        weights = torch.ones(embeddings.shape[0]) if weights is None else weights
        if not isinstance(weights, Tensor) or weights.shape != (embeddings.shape[0],):
            got = tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
            raise ValueError(f"weights must have shape [{embeddings.shape[0]}] (one per embedding), got {got}")
        if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
            raise ValueError(f"weights must be finite and >= 0, got {weights.tolist()}")
        vectors = F.normalize(embeddings.detach().float().cpu(), dim=1).numpy().astype("<f4")
        now = time.time()
        rows = [
            (name, vector.tobytes(), source, now, weight)
            for vector, source, weight in zip(vectors, sources, weights.tolist(), strict=True)
        ]
        with self._lock, self._transaction():
            self._db.executemany(
                "INSERT INTO faces(name, embedding, source, created, weight) VALUES (?, ?, ?, ?, ?)", rows
            )
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

    def template_of(self, name: str) -> Tensor | None:
        """The template ``[D]`` of ``name`` (the weighted mean of its unit embeddings), ``None`` when unknown."""
        return self.entries().template(check_name(name))

    def identify(self, embeddings: Tensor, top_k: int = 5, match: str = "template") -> list[list[tuple[str, float]]]:
        """For each query ``[M, D]``, the ``top_k`` identities by the cosine similarity of their
        template (``match="template"``) or of their best enrolled embedding (``"best"``) with the
        query, best first (:meth:`Entries.search`)."""
        if match not in MODES:
            raise ValueError(f"match must be one of {', '.join(MODES)}, got {match!r}")
        if not isinstance(embeddings, Tensor) or embeddings.dim() != 2 or embeddings.shape[1] != self.dim:
            got = tuple(embeddings.shape) if isinstance(embeddings, Tensor) else type(embeddings).__name__
            raise ValueError(f"embeddings must have shape [M, {self.dim}], got {got}")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
        return self.entries().search(F.normalize(embeddings.detach().float().cpu(), dim=1), top_k, match)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ internals

    def _read_entries(self) -> Entries:
        rows = self._db.execute("SELECT name, embedding, weight FROM faces ORDER BY id").fetchall()
        weights = torch.tensor([weight for _, _, weight in rows], dtype=torch.float64)
        return Entries.of([name for name, _, _ in rows], self._vectors(blob for _, blob, _ in rows), weights)

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
