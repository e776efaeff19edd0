"""What the proxy tells its operator: counts every answer (counters.py), records the entries a build used
(recording.py, option cache_record) and answers the Prometheus metrics route (metrics.py). The addon makes
one call per hook into an Observer; disk work runs on the Observer's own thread."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

from mitmproxy import exceptions, http

from cacheaddon import counters, digests, endpoint, keys, metrics, responses
from cacheaddon.policy import Outcome
from cacheaddon.recording import Recorder
from cacheaddon.settings import Settings
from cacheaddon.store import Store, StoreError

logger = logging.getLogger(__name__)


class Observer:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.store = store
        self.counters = counters.Counters(settings.cache_dir)
        self.counters.start()
        store.watch(self.counters.integrity_failed, self.counters.evicted)
        self.recorder: Recorder | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="cacheaddon-observe")
        self._names = {"localhost", socket.gethostname().lower(), socket.getfqdn().lower()}
        self._record_failed = False
        self.set_record(settings.record)

    @classmethod
    def update(cls, old: Observer | None, settings: Settings, store: Store) -> Observer:
        """The observer for these settings: the old one while its store is kept. Raises OptionsError."""
        if old is not None and old.store is store:
            old.set_record(settings.record)
            return old
        if old is not None:
            old.close()
        return cls(settings, store)

    def set_record(self, path: Path | None) -> None:
        if self.recorder is not None and self.recorder.path == path:
            return
        try:
            recorder = Recorder(path) if path is not None else None
        except OSError as exc:
            raise exceptions.OptionsError(f"cache_record: cannot append to {path}: {exc.strerror}") from None
        if self.recorder is not None:
            self.recorder.close()
        self.recorder = recorder

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.counters.close()
        if self.recorder is not None:
            self.recorder.close()

    # the metrics route

    def is_metrics(self, flow: http.HTTPFlow, settings: Settings) -> bool:
        """A request for the metrics, from an allowed client: `/_cacheaddon/metrics` on a registry endpoint,
        or on the forward proxy's own address (by IP, loopback, localhost or this machine's name)."""
        req = flow.request
        if req.path.split("?", 1)[0] != metrics.PATH or req.method not in ("GET", "HEAD"):
            return False
        if not settings.is_allowed_client(str((flow.client_conn.peername or ("",))[0])):
            return False
        if endpoint.origin_of(flow) is not None:
            return True
        sockname = flow.client_conn.sockname
        if not sockname or req.port != sockname[1]:
            return False
        host = req.host.strip("[]").lower()
        if host in self._names or host == str(sockname[0]).lower():
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    async def serve_metrics(self, flow: http.HTTPFlow) -> None:
        loop = asyncio.get_running_loop()
        try:
            snapshot = await loop.run_in_executor(self._pool, self._snapshot)
            body = metrics.exposition(snapshot)
        except (StoreError, counters.StatsError, OSError) as exc:
            logger.warning("metrics unavailable: %s", exc)
            flow.response = responses.make(503, "Service Unavailable", [], f"{exc}\n".encode())
            return
        fields = [("Content-Type", metrics.CONTENT_TYPE), ("Cache-Control", "no-store")]
        flow.response = responses.make(200, "OK", fields, b"" if flow.request.method == "HEAD" else body)

    def _snapshot(self) -> metrics.Snapshot:
        return metrics.Snapshot(self.counters.totals(), self.store.record_count(), self.store.volume())

    # answers

    def answered(self, flow: http.HTTPFlow, meta: dict[str, object]) -> None:
        """Counts a finished answer (and records its entry while cache_record is set)."""
        outcome, response = meta.get("outcome"), flow.response
        if not isinstance(outcome, Outcome) or meta.get("refused") or response is None:
            return
        url, detail = str(meta["url"]), str(meta.get("detail", ""))
        cache_bytes = 0
        if outcome is not Outcome.MISS and flow.request.method != "HEAD" and response.status_code != 304:
            if response.raw_content is not None:
                cache_bytes = len(response.raw_content)
            else:  # streamed through the relay, which sends exactly Content-Length bytes
                cache_bytes = int(response.headers.get("content-length", "0") or 0)
        end = response.timestamp_end or time.time()
        self.counters.answered(
            outcome.value,
            counters.ecosystem(url, response.headers.get("content-type", "")),
            urlsplit(url).netloc.lower(),
            cache_bytes,
            max(0.0, end - flow.request.timestamp_start),
            counters.stale_reason(detail) if outcome is Outcome.STALE else None,
        )
        if self.recorder is not None:
            fields: dict[str, list[str]] = {}
            for name, value in flow.request.headers.items(multi=True):
                fields.setdefault(name.lower(), []).append(value)
            joined = {name: ", ".join(values) for name, values in fields.items()}
            self.record(keys.RequestView(flow.request.method, digests.canonical(url) or url, joined))

    def record(self, view: keys.RequestView) -> None:
        """Records the entry that answers `view` while cache_record is set: a client's answer, or a document
        the guard asked the cache for on a client's behalf (a replay needs it too)."""
        if self.recorder is None:
            return
        try:
            self._pool.submit(self._record, view)
        except RuntimeError:  # closed: the addon is being unloaded
            pass

    def interrupted(self, meta: dict[str, object]) -> None:
        outcome = meta.get("outcome")
        if isinstance(outcome, Outcome) and not meta.get("refused"):
            self.counters.interrupted(outcome.value)

    def _record(self, view: keys.RequestView) -> None:
        """Appends the entry that now answers `view` (the one just served or stored) to the record."""
        recorder = self.recorder
        if recorder is None:
            return
        try:
            found = []
            for key in keys.cache_keys(view, self.store.salt).lookup_order():
                entry = self.store.peek_record(key)
                if entry is not None and keys.vary_matches(entry, view, self.store.salt):
                    found.append((entry.stored_at, key, entry))
            if found:
                _, key, entry = max(found, key=lambda item: item[0])
                recorder.write(key, entry)
        except (StoreError, OSError) as exc:
            if not self._record_failed:
                logger.warning("cache_record: could not record %s: %s", keys.redact(view.url), exc)
                self._record_failed = True
