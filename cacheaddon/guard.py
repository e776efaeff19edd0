"""The supply-chain guard, applied when answering (never when storing): PyPI and npm metadata without the
versions a client may not have (too young, named by an advisory, of a quarantined project), and 403 for a
download of one of their files. The cache keeps the upstream's documents, so a version appears by itself
once it is old enough, and a filtered document gets validators of its own.

Dates a document lacks come from its sibling (the JSON form of a PyPI HTML page, the full npm packument of
an abbreviated one), answered through the cache; what was learned of a package (publish times, project
status, which index a PyPI files host belongs to) is kept in memory for the file downloads that follow.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote, urljoin, urlsplit

from cacheaddon import (
    advisoryfeed,
    cachestatus,
    conditional,
    documents,
    npmdocs,
    policy,
    pypidocs,
    responses,
    versions,
)
from cacheaddon import counters as c
from cacheaddon.advisoryfeed import AdvisoryFeed
from cacheaddon.counters import Counters
from cacheaddon.entry import Entry
from cacheaddon.keys import RequestView, redact
from cacheaddon.policy import Outcome
from cacheaddon.reply import Reply
from cacheaddon.rulings import Dates, Reason, Rules, Ruling, Screened, quarantined
from cacheaddon.settings import Settings
from cacheaddon.siblings import Ask, Sibling, as_of, key_of, origin_of, sibling_via

logger = logging.getLogger(__name__)

# Seconds a PyPI project's status learned from its index page decides its file downloads.
STATUS_TTL = 60.0
# What the guard did with a version, as its log lines say it.
_REFUSED, _HIDDEN, _LET_THROUGH = "refused a download:", "hid from metadata:", "let through:"
_KNOWN_LIMIT = 1024  # packages remembered
_LOGGED_LIMIT = 100_000  # (package, version, reason) lines logged once each, then the memory starts over
# Not passed on for a document: it is answered whole, and the client's validators are checked against what
# is finally sent.
_WHOLE_DOCUMENT = conditional.CONDITIONAL_FIELDS
# Dropped from a filtered document's fields: it is a new representation, sent whole and unencoded.
_REPRESENTATION = frozenset(
    {
        "content-encoding",
        "content-length",
        "accept-ranges",
        "etag",
        "last-modified",
        "x-cache",
        "x-cache-detail",
    }
)


def build(settings: Settings, previous: Guard | None = None) -> Guard | None:
    """The guard for these settings, or None when it is off. Raises ValueError naming the option for an
    advisories path that is neither a directory nor a zip. What the previous guard learned and loaded is
    kept where the settings allow."""
    if not settings.guard_active:
        return None
    feed = None
    if settings.block_advisories is not None:
        advisoryfeed.check_source(settings.block_advisories)
        old = previous.feed if previous is not None else None
        wanted = (settings.block_advisories, settings.block_advisories_all)
        keep = old is not None and (old.path, old.include_all) == wanted
        feed = old if keep else AdvisoryFeed(*wanted)
    guard = Guard(settings, feed)
    if previous is not None:
        guard.known, guard.index_bases = previous.known, previous.index_bases
    return guard


@dataclass
class Known:
    dates: Dates  # PyPI: by file name; npm: by version
    status: str  # PEP 792 project status ("active" for npm)
    learned: float  # time.monotonic()


class Guard:
    # Where refusals and filtered documents are counted, and where the sibling documents asked for are
    # recorded (cache_record): the addon puts its observer's here (observe.py).
    counters = Counters(None)
    asked: Callable[[RequestView], None] = staticmethod(lambda view: None)

    def __init__(
        self, settings: Settings, feed: AdvisoryFeed | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings, self.feed, self.clock = settings, feed, clock
        self.known: OrderedDict[str, Known] = OrderedDict()
        # A PyPI files host -> the simple index its files are listed in (learned from the pages served).
        self.index_bases = {"https://files.pythonhosted.org": "https://pypi.org/simple/"}
        self._logged: set[tuple[str, str, str, str, Reason]] = set()

    async def rules(self) -> Rules:
        if self.feed is None:
            return Rules.of(self.settings, self.clock())
        index = await self.feed.current()
        return Rules.of(self.settings, self.clock(), index, self.feed.generation)

    async def answer(self, ask: Ask, request: RequestView, url: str, origin: str) -> Reply:
        """The cache's answer to a GET or HEAD (what `ask` gets) as the guard lets the client have it."""
        rules = await self.rules()
        sibling = sibling_via(ask, request, url, self.clock, self.asked)
        refusal = await self.refusal(url, rules, sibling)
        if refusal is not None:
            self._record(_REFUSED, refusal)
            detail = f"refused: {refusal.detail}"
            return Reply(Outcome.MISS, detail, responses.error(403, redact(url), detail))
        if policy.is_immutable(url, self.settings):
            return await ask(request, url, origin)
        # A HEAD's headers must be the filtered document's, so documents are fetched with GET.
        headers = {k: v for k, v in request.headers.items() if k not in _WHOLE_DOCUMENT}
        reply = await ask(RequestView("GET", request.url, headers), url, origin)
        reply = await self.screen(reply, url, rules, sibling)
        return await _conditional(reply, request, url)

    # --- downloads

    async def refusal(self, url: str, rules: Rules, sibling: Sibling) -> Ruling | None:
        """Why a package file must not be served, or None (also for anything that is no package file)."""
        npm = npmdocs.tarball_document(url)
        if npm is not None:
            name, version, doc_url = npm
            published = after = None
            if rules.ages_apply(versions.NPM, name):
                known = await self._known(doc_url, version, sibling, npmdocs.FULL_TYPE)
                published, after = known.dates.of(version) if known is not None else (None, None)
            return self._refused(rules.judge(versions.NPM, name, version, published, after=after))
        path = urlsplit(url).path
        pypi = versions.pypi_file(path)
        if pypi is None:
            return None
        project, version = pypi
        base = self.index_bases.get(origin_of(url))
        if base is None:  # no index known to list this file: no dates or status to judge it by
            return rules.advised(versions.PYPI, project, version)
        # As the index documents name it (a client may have escaped characters of it: one cache key still).
        filename = unquote(path.rsplit("/", 1)[-1]).removesuffix(versions.METADATA_SUFFIX)
        known = await self._known(f"{base}{project}/", filename, sibling, pypidocs.JSON_TYPE, STATUS_TTL)
        if known is not None and known.status == pypidocs.QUARANTINED:
            return quarantined(versions.PYPI, project, version)
        published, after = known.dates.of(filename) if known is not None else (None, None)
        return self._refused(rules.judge(versions.PYPI, project, version, published, filename, after))

    def _refused(self, ruling: Ruling | None) -> Ruling | None:
        if ruling is not None and not ruling.refused:
            self._record(_LET_THROUGH, ruling)
            return None
        return ruling

    async def _known(
        self, doc_url: str, needed: str, sibling: Sibling, accept: str, max_age: float | None = None
    ) -> Known | None:
        """What is known of the package whose document is at doc_url, asked for again when `needed` (a
        version or file name) is not in it or it is older than max_age. None when it cannot be had."""
        known = self.known.get(key_of(doc_url))
        if known is not None and (max_age is None or time.monotonic() - known.learned < max_age):
            if needed in known.dates.times or known.status == pypidocs.QUARANTINED:
                return known
        return await self._ask(doc_url, sibling, accept) or known

    async def _ask(self, doc_url: str, sibling: Sibling, accept: str) -> Known | None:
        """Learns the dates (and status) of a package from its sibling document."""
        fetched = await sibling(doc_url, accept)
        if fetched is None:
            return None
        found = await asyncio.to_thread(_read_known, fetched.body, accept)
        return self._learn(key_of(doc_url), found[0], found[1], fetched.as_of) if found else None

    def _learn(self, key: str, times: dict[str, float | None], status: str, when: float) -> Known:
        known = Known(Dates(times, when), status, time.monotonic())
        self.known[key] = known
        self.known.move_to_end(key)
        while len(self.known) > _KNOWN_LIMIT:
            self.known.popitem(last=False)
        return known

    # --- documents

    async def screen(self, reply: Reply, url: str, rules: Rules, sibling: Sibling) -> Reply:
        """The reply with the versions the client may not see taken out of its document, if it is a PyPI
        or npm metadata document; any other reply as it is."""
        status, fields = documents.status_fields(reply)
        content_type = (documents.field(fields, "content-type") or "").split(";", 1)[0].strip().lower()
        project = pypidocs.project_of(url)
        if status != 200 or not _screenable(content_type, project):
            return reply
        raw = await documents.read_whole(reply, url, "to filter")
        if raw is documents.Unread.TOO_LARGE:
            return reply
        if raw is documents.Unread.FAILED:
            return documents.unreadable(reply, url, "filtering")
        encoding = documents.field(fields, "content-encoding") or ""
        data = await asyncio.to_thread(documents.decode, raw, encoding)
        when = as_of(fields, self.clock())
        screened = None
        if data is not None:
            screened = await self._screen(content_type, data, url, project, rules, sibling, when)
        if screened is None or screened.body is None:
            unchanged = responses.make(status, "OK", fields, raw)  # the stored body: memos of it still hold
            return Reply(reply.outcome, reply.detail, unchanged, stored=reply.stored, sha256=reply.sha256)
        self.counters.guarded(c.GUARD_FILTERED, _ecosystem(content_type))
        for ruling in screened.removed:
            self._record(_HIDDEN, ruling)
        detail = "; ".join(d for d in (reply.detail, screened.summary(rules)) if d)
        digest = hashlib.sha256(rules.fingerprint().encode() + screened.body).hexdigest()
        kept = [(k, v) for k, v in fields if k.lower() not in _REPRESENTATION and not _ours(k, v)]
        kept += [
            ("ETag", f'"guard-{digest[:32]}"'),
            *responses.cache_fields(reply.outcome, detail, stored=reply.stored),
        ]
        filtered = responses.make(200, "OK", kept, screened.body)
        return Reply(reply.outcome, detail, filtered, stored=reply.stored)

    async def _screen(
        self,
        content_type: str,
        data: bytes,
        url: str,
        project: str | None,
        rules: Rules,
        sibling: Sibling,
        when: float,
    ) -> Screened | None:
        """`when`: the time as of which the document is the registry's."""
        if content_type == pypidocs.JSON_TYPE:
            screened = await asyncio.to_thread(pypidocs.screen_json, data, project or "", rules)
            self._learn_pypi(url, screened, when)
        elif content_type in pypidocs.HTML_TYPES and project is not None:
            html = functools.partial(pypidocs.screen_html, data, project, rules)
            screened = await self._dated(html, url, sibling, pypidocs.JSON_TYPE)
            self._learn_pypi(url, screened, None)
        elif content_type == npmdocs.ABBREVIATED_TYPE or npmdocs.looks_like(data):
            packument = functools.partial(npmdocs.screen, data, rules)
            screened = await self._dated(packument, url, sibling, npmdocs.FULL_TYPE)
            if screened.times:
                self._learn(key_of(url), dict(screened.times), "active", when)
        else:
            return None
        for ruling in screened.noted:
            self._record(_LET_THROUGH, ruling)
        return screened

    async def _dated(
        self, screen: Callable[[Dates | None], Screened], url: str, sibling: Sibling, accept: str
    ) -> Screened:
        """Screens a document that may carry no dates of its own with those learned of its sibling (the
        JSON form of a PyPI page, the full npm packument), asked for again when they do not cover it."""
        known = self.known.get(key_of(url))
        screened = await asyncio.to_thread(screen, known.dates if known is not None else None)
        if screened.lacks_dates:
            fresh = await self._ask(url, sibling, accept)
            if fresh is not None:
                screened = await asyncio.to_thread(screen, fresh.dates)
        return screened

    def _learn_pypi(self, url: str, screened: Screened, when: float | None) -> None:
        """Remembers a page's dates and status (`when` it is from, for a page that has its own dates), and
        which index the hosts of its files belong to."""
        if when is not None and (screened.times or screened.status != "active"):
            self._learn(key_of(url), dict(screened.times), screened.status, when)
        path = urlsplit(url).path
        base = urljoin(url, path.rstrip("/").rsplit("/", 1)[0] + "/")
        for link in screened.links:
            origin = origin_of(urljoin(url, link))
            if origin not in self.index_bases and len(self.index_bases) < _KNOWN_LIMIT:
                self.index_bases[origin] = base

    def _record(self, action: str, ruling: Ruling) -> None:
        """Counts every one; logs each package, version and reason once."""
        if action == _LET_THROUGH:
            self.counters.guarded(c.GUARD_UNDATED, ruling.ecosystem)
        else:
            name = c.GUARD_REFUSALS if action == _REFUSED else c.GUARD_HIDDEN
            self.counters.guarded(name, ruling.ecosystem, ruling.reason.value)
        key = (action, ruling.ecosystem, ruling.name, ruling.version, ruling.reason)
        if key in self._logged:
            return
        if len(self._logged) >= _LOGGED_LIMIT:
            self._logged.clear()
        self._logged.add(key)
        logger.log(logging.WARNING if ruling.refused else logging.INFO, "guard: %s %s", action, ruling.detail)


def _ecosystem(content_type: str) -> str:
    pypi = content_type == pypidocs.JSON_TYPE or content_type in pypidocs.HTML_TYPES
    return versions.PYPI if pypi else versions.NPM


def _ours(name: str, value: str) -> bool:
    """The Cache-Status member the cache wrote (an upstream cache's stays): replaced with one for the new
    detail."""
    return name.lower() == "cache-status" and value.startswith(f"{cachestatus.NAME};")


def _screenable(content_type: str, project: str | None) -> bool:
    if content_type == pypidocs.JSON_TYPE or content_type in (npmdocs.ABBREVIATED_TYPE, npmdocs.FULL_TYPE):
        return True
    return content_type in pypidocs.HTML_TYPES and project is not None


def _read_known(data: bytes, accept: str) -> tuple[dict[str, float | None], str] | None:
    """In a thread: the dates (and status) a sibling document gives."""
    if accept == pypidocs.JSON_TYPE:
        doc = pypidocs.parse_json(data)
        return None if doc is None else (pypidocs.json_times(doc), pypidocs.json_status(doc))
    packument = npmdocs.parse(data)
    return None if packument is None else (npmdocs.times(packument), "active")


async def _conditional(reply: Reply, request: RequestView, url: str) -> Reply:
    """304 when the client already has what is about to be sent (RFC 9110 13.1), judged on the validators
    of the answer itself: a filtered document's own, never the upstream's."""
    status, fields = documents.status_fields(reply)
    if status != 200 or not (request.header("if-none-match") or request.header("if-modified-since")):
        return reply
    sent = Entry(url=url, status=200, reason="OK", headers=tuple(fields), stored_at=0.0, size=0, sha256="")
    if not conditional.client_has_current(sent, request):
        return reply
    await reply.discard()
    age = documents.field(fields, "age")
    age_seconds = int(age) if age is not None and age.isdigit() else 0
    return Reply(
        reply.outcome, reply.detail, responses.not_modified(sent, reply.outcome, reply.detail, age_seconds)
    )
