"""Persisted documents: Apollo's automatic persisted queries, and trusted documents.

A client may name its document instead of sending it:

* **Automatic persisted queries** (Apollo's protocol): ``extensions.persistedQuery``
  is ``{"version": 1, "sha256Hash": "<hex>"}``. Sent alone, the hash is looked
  up; unknown, the answer is ``PERSISTED_QUERY_NOT_FOUND`` (message
  ``PersistedQueryNotFound``, status 200 as Apollo Server answers it), which
  Apollo's link recognises and answers by sending the query with the hash.
  That registers it, once the hash is checked (``PERSISTED_QUERY_HASH_MISMATCH``
  otherwise) and the document validated: a document that never ran is never
  stored. The store is a bounded LRU in memory, or Redis when configured
  (``<DEPOT_REDIS_PREFIX>:apq:<hash>``, expiring after
  ``DEPOT_PERSISTED_QUERIES_TTL_SECONDS``), shared by every replica.
* **Trusted documents**: a manifest (``DEPOT_TRUSTED_DOCUMENTS``) in the format
  GraphQL Code Generator's client preset writes (``persisted-documents.json``,
  ``{"<hash>": "<document>"}``) or Apollo's persisted-query manifest
  (``{"format": "apollo-persisted-query-manifest", "version": 1, "operations":
  [{"id", "name", "type", "body"}]}``). A client sends the id as ``documentId``
  (the GraphQL-over-HTTP persisted-documents appendix; ``sha256:<hex>`` or the
  bare id) or as Apollo's ``extensions.persistedQuery.sha256Hash``. With
  ``DEPOT_TRUSTED_DOCUMENTS_ONLY`` nothing else runs: a document not in the
  manifest is ``PERSISTED_QUERY_NOT_IN_LIST`` (403), and nothing is registered.

:func:`resolve` decides, for one request, which document runs. The view calls
it before executing an HTTP request and the WebSocket handlers before starting
an operation; both then run the document as if it had been sent, so the parse
and validation caches (keyed by the document's text) hit as for any query.

Cost per request: nothing for a plain query without a manifest; with
``DEPOT_TRUSTED_DOCUMENTS_ONLY``, one SHA-256 of the document (a few
microseconds for a few KiB); a hash-only request, one dict lookup in memory or
one Redis ``GET``; a registration, one SHA-256 and one ``SET``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import structlog
from graphql import (
    GraphQLError,
    GraphQLFormattedError,
    GraphQLSyntaxError,
    OperationDefinitionNode,
    parse,
)
from redis.asyncio import Redis
from redis.exceptions import RedisError
from strawberry.types import ExecutionResult

from core.settings import Settings

logger = structlog.get_logger("depot.persisted")

APQ_VERSION: Final = 1
APOLLO_MANIFEST_FORMAT: Final = "apollo-persisted-query-manifest"
# A larger document still runs; it is just not stored (its client sends it whole each time),
# so unique documents cannot fill the store (or Redis) a megabyte at a time.
MAX_STORED_DOCUMENT: Final = 64 * 1024
# What Apollo Server sends with its persisted-query errors: never cached by a CDN,
# so the client's retry with the full query is not answered from a cache.
NO_CACHE: Final = "private, no-cache, must-revalidate"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_MAX_ID = 256


class PersistedQueryError(Exception):
    """A request naming a document that cannot run: its code, message and HTTP status."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    @property
    def headers(self) -> dict[str, str]:
        """Answers a client will retry (not found, not supported) must not be cached."""
        return {"Cache-Control": NO_CACHE} if self.status == 200 else {}

    def formatted(self) -> GraphQLFormattedError:
        return GraphQLError(self.message, extensions={"code": self.code}).formatted


def _not_found() -> PersistedQueryError:
    # The message is what Apollo's link (and older clients) match on.
    return PersistedQueryError("PERSISTED_QUERY_NOT_FOUND", "PersistedQueryNotFound", 200)


def _not_supported() -> PersistedQueryError:
    return PersistedQueryError("PERSISTED_QUERY_NOT_SUPPORTED", "PersistedQueryNotSupported", 200)


def sha256_hex(document: str) -> str:
    return hashlib.sha256(document.encode()).hexdigest()


# -- the store of automatic persisted queries ------------------------------------


class Store(Protocol):
    """Documents by their SHA-256; lossy on purpose (a miss costs the client one retry)."""

    async def get(self, sha256: str) -> str | None: ...

    async def put(self, sha256: str, document: str) -> None: ...


class MemoryStore:
    """The embedded store: least recently used documents go first past ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._documents: OrderedDict[str, str] = OrderedDict()

    async def get(self, sha256: str) -> str | None:
        document = self._documents.get(sha256)
        if document is not None:
            self._documents.move_to_end(sha256)
        return document

    async def put(self, sha256: str, document: str) -> None:
        if sha256 in self._documents:
            self._documents.move_to_end(sha256)
            return
        self._documents[sha256] = document
        self.size += len(document)
        while self.size > self.max_bytes and self._documents:
            _, evicted = self._documents.popitem(last=False)
            self.size -= len(evicted)


class RedisStore:
    """Documents under ``<prefix>:apq:<sha256>``, each expiring ``ttl_s`` after registration.

    Redis out of reach is a miss, not a failure: the client sends the query whole.
    """

    def __init__(self, redis: Redis, prefix: str, ttl_s: int) -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl_s = ttl_s

    def key(self, sha256: str) -> str:
        return f"{self._prefix}:apq:{sha256}"

    async def get(self, sha256: str) -> str | None:
        try:
            value = await self._redis.get(self.key(sha256))
        except RedisError:
            logger.warning("persisted query lookup failed", exc_info=True)
            return None
        return value.decode() if isinstance(value, bytes) else value

    async def put(self, sha256: str, document: str) -> None:
        try:
            await self._redis.set(self.key(sha256), document, ex=self._ttl_s)
        except RedisError:
            logger.warning("persisted query registration failed", exc_info=True)


# -- the manifest of trusted documents ------------------------------------------


@dataclass(frozen=True)
class TrustedDocument:
    id: str
    body: str
    # The operation's name, when the document has exactly one named operation.
    name: str | None


class ManifestError(ValueError):
    """The trusted-documents manifest cannot be read; the message says how to fix it."""


@dataclass(frozen=True)
class Manifest:
    """The trusted documents, by id and by the SHA-256 of their text."""

    by_id: dict[str, TrustedDocument]
    by_sha256: dict[str, TrustedDocument]

    @property
    def labels(self) -> dict[str, str]:
        """Each document's metrics label (its operation's name, else its id), by its text."""
        return {doc.body: doc.name or doc.id for doc in self.by_id.values()}

    def find(self, id_: str) -> TrustedDocument | None:
        """The document with this id, or whose text has this SHA-256 (ids need not be hashes)."""
        bare = _bare(id_)
        return self.by_id.get(bare) or self.by_sha256.get(bare)


def _bare(id_: str) -> str:
    """``sha256:<hex>`` (the GraphQL-over-HTTP proposal's form) and ``<hex>`` are one id."""
    prefix, _, rest = id_.partition(":")
    return rest if prefix == "sha256" and _SHA256_HEX.fullmatch(rest) else id_


def load_manifest(path: Path) -> Manifest:
    """Read a Code Generator ``persisted-documents.json`` or an Apollo manifest.

    Every document is parsed here, once at start, so a broken manifest stops
    Depot with a message naming it rather than failing its clients later.
    """
    where = f"DEPOT_TRUSTED_DOCUMENTS={path}"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ManifestError(f"{where}: cannot read it ({exc.strerror}).") from None
    except ValueError as exc:
        raise ManifestError(f"{where}: not JSON ({exc}).") from None
    if isinstance(data, dict) and "format" in data:
        if data.get("format") != APOLLO_MANIFEST_FORMAT or data.get("version") != 1:
            raise ManifestError(
                f"{where}: unknown format {data.get('format')!r} version "
                f"{data.get('version')!r}; Depot reads {APOLLO_MANIFEST_FORMAT!r} version 1."
            )
        operations = data.get("operations")
        if not isinstance(operations, list) or not all(
            isinstance(op, dict) and all(isinstance(op.get(key), str) for key in ("id", "body"))
            for op in operations
        ):
            raise ManifestError(f"{where}: `operations` must be a list of {{id, name, body}}.")
        pairs = [(op["id"], op["body"]) for op in operations]
    elif isinstance(data, dict) and all(isinstance(body, str) for body in data.values()):
        pairs = list(data.items())
    else:
        raise ManifestError(
            f'{where}: expected {{"<hash>": "<document>"}} (GraphQL Code Generator) or '
            f'{{"format": "{APOLLO_MANIFEST_FORMAT}", …}} (Apollo).'
        )
    documents = [TrustedDocument(_bare(id_), body, _name(body, id_, where)) for id_, body in pairs]
    return Manifest(
        by_id={doc.id: doc for doc in documents},
        by_sha256={sha256_hex(doc.body): doc for doc in documents},
    )


def _name(body: str, id_: str, where: str) -> str | None:
    try:
        document = parse(body)
    except GraphQLSyntaxError as exc:
        raise ManifestError(f"{where}: document {id_!r} does not parse: {exc.message}") from None
    names = [
        d.name.value if d.name else None
        for d in document.definitions
        if isinstance(d, OperationDefinitionNode)
    ]
    return names[0] if len(names) == 1 else None


# -- deciding which document runs -----------------------------------------------


@dataclass(frozen=True)
class Resolved:
    """The document a request runs, and what to do once it has run."""

    query: str | None
    # The trusted document it is, if it is one.
    trusted: TrustedDocument | None = None
    # A hash to store ``query`` under once it has run (an APQ registration).
    register: str | None = None


class PersistedDocuments:
    """What one app knows of persisted documents: its settings, manifest and memory store."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.persisted_queries
        self.trusted_only = settings.trusted_documents_only
        self.manifest = (
            load_manifest(settings.trusted_documents) if settings.trusted_documents else None
        )
        # What `schema.metrics.operation_label` names operations by: only trusted
        # documents, a bounded set (anyone may register a persisted query).
        self.labels = self.manifest.labels if self.manifest else {}
        self.memory = MemoryStore(settings.persisted_queries_memory_bytes)
        self._prefix = settings.redis_prefix
        self._ttl_s = settings.persisted_queries_ttl_seconds

    def store(self, redis: Redis | None) -> Store:
        """Redis when the app has it (shared by replicas), else this process's memory."""
        return RedisStore(redis, self._prefix, self._ttl_s) if redis is not None else self.memory

    async def resolve(
        self,
        query: str | None,
        extensions: dict[str, object] | None,
        document_id: object,
        redis: Redis | None,
    ) -> Resolved:
        """The document to run for a request's ``query``, ``extensions`` and ``documentId``.

        Raises :class:`PersistedQueryError` when the request names a document
        it cannot run.
        """
        persisted = (extensions or {}).get("persistedQuery")
        # A `query` sent is what runs: `documentId` names a document only in its place.
        if document_id is not None and query is None:
            resolved = await self._by_document_id(document_id, redis)
        elif persisted is not None:
            resolved = await self._by_apq(query, persisted, redis)
        else:
            resolved = Resolved(query)
        if self.trusted_only and resolved.trusted is None:
            resolved = self._require_trusted(resolved)
        return resolved

    async def _by_document_id(self, document_id: object, redis: Redis | None) -> Resolved:
        if not isinstance(document_id, str) or not 0 < len(document_id) <= _MAX_ID:
            raise PersistedQueryError(
                "BAD_REQUEST", f"`documentId` must be a string of 1 to {_MAX_ID} characters."
            )
        trusted = self.manifest.find(document_id) if self.manifest else None
        if trusted is not None:
            return Resolved(trusted.body, trusted)
        bare = _bare(document_id)
        if self.enabled and not self.trusted_only and _SHA256_HEX.fullmatch(bare):
            stored = await self.store(redis).get(bare)
            if stored is not None:
                return Resolved(stored)
        raise _not_found()

    async def _by_apq(self, query: str | None, persisted: object, redis: Redis | None) -> Resolved:
        if not self.enabled and self.manifest is None:
            raise _not_supported()
        if not isinstance(persisted, dict) or persisted.get("version") != APQ_VERSION:
            raise PersistedQueryError(
                "BAD_REQUEST",
                "`extensions.persistedQuery` must be "
                '{"version": 1, "sha256Hash": "<hex>"}: only version 1 is supported.',
            )
        hash_ = persisted.get("sha256Hash")
        if not isinstance(hash_, str) or not 0 < len(hash_) <= _MAX_ID:
            raise PersistedQueryError(
                "BAD_REQUEST", "`extensions.persistedQuery.sha256Hash` must be a string."
            )
        trusted = self.manifest.find(hash_) if self.manifest else None
        if trusted is not None:
            # The id names the document, whatever text comes with it: GraphQLWsLink
            # sends Apollo's print of a document whose id Code Generator computed
            # from its own print. Nothing is registered, so nothing can be poisoned.
            return Resolved(trusted.body, trusted)
        if query is None:
            if self.enabled and not self.trusted_only:
                stored = await self.store(redis).get(hash_)
                if stored is not None:
                    return Resolved(stored)
            raise _not_found()
        if sha256_hex(query) != hash_:
            raise PersistedQueryError(
                "PERSISTED_QUERY_HASH_MISMATCH",
                "`extensions.persistedQuery.sha256Hash` is not the SHA-256 of `query`: "
                "hash the exact text sent (lowercase hex).",
            )
        registers = self.enabled and not self.trusted_only and len(query) <= MAX_STORED_DOCUMENT
        return Resolved(query, register=hash_ if registers else None)

    def _require_trusted(self, resolved: Resolved) -> Resolved:
        assert self.manifest is not None, "trusted_documents_only requires a manifest"
        trusted = (
            self.manifest.by_sha256.get(sha256_hex(resolved.query))
            if resolved.query is not None
            else None
        )
        if trusted is None:
            raise PersistedQueryError(
                "PERSISTED_QUERY_NOT_IN_LIST",
                "Only the documents in the trusted-documents manifest run here "
                "(DEPOT_TRUSTED_DOCUMENTS_ONLY); send one's id as `documentId`, "
                "or add this document to the manifest.",
                403,
            )
        return Resolved(resolved.query, trusted)

    async def registered(
        self, resolved: Resolved, result: ExecutionResult, redis: Redis | None
    ) -> None:
        """Store a registration's document, if the operation got as far as running.

        An answer without ``data`` whose errors have no path never ran (it did
        not parse or validate, or was over a limit): it is not stored.
        """
        if resolved.register is None or resolved.query is None:
            return
        errors = result.errors or []
        if result.data is None and all(error.path is None for error in errors):
            return
        await self.store(redis).put(resolved.register, resolved.query)
