"""The guard on PyPI's simple API project pages, JSON (PEP 691, with PEP 700's upload-time and versions)
and HTML (PEP 503). Pure: bytes in, bytes out.

A file is hidden when the guard refuses its version or its own upload time; its PEP 658 metadata goes with
it (it is an attribute of the same entry). A version left without files leaves `versions`. The files kept
are untouched: URLs, hashes and attributes stay byte for byte in HTML, value for value in JSON. A project
quarantined upstream (PEP 792) offers no files at all.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

from cacheaddon import versions
from cacheaddon.rulings import Dates, Rules, Ruling, Screened, parse_time, quarantined

JSON_TYPE = "application/vnd.pypi.simple.v1+json"
HTML_TYPES = ("text/html", "application/vnd.pypi.simple.v1+html")
QUARANTINED = "quarantined"
# A project page: .../simple/<project>/ (PyPI, devpi's +simple, Artifactory's .../simple/...).
_PROJECT_PATH = re.compile(r"/\+?simple/([^/]+)/?$")
# One link with what surrounds it on its line, so that a removed link leaves no blank line or stray <br>.
# Its text ends at </a>, or where the next link or the page's end begins: an anchor left unclosed is still
# a link to an HTML parser (pip's, uv's), and must neither hide the next one nor escape being judged.
_ANCHOR = re.compile(
    rb"""[ \t]*<a\b(?P<attrs>(?:[^>"']|"[^"]*"|'[^']*')*)>"""
    rb"""(?P<text>(?:(?!<a\b|</a\s*>|</body\b|</html\b).)*)(?:</a\s*>)?"""
    rb"""[ \t]*(?:<br\s*/?>)?[ \t]*(?:\r?\n)?""",
    re.I | re.S,
)
_HREF = re.compile(rb"""\bhref\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))""", re.I)
_META = re.compile(rb"<meta\b[^>]*>", re.I)
_ATTR = re.compile(rb"""([a-zA-Z_:.-]+)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))""")


def project_of(path: str) -> str | None:
    """The normalised project name of a simple API project page's URL path, else None."""
    m = _PROJECT_PATH.search(unquote(urlsplit(path).path))
    return versions.normalize_name(versions.PYPI, m[1]) if m else None


def parse_json(data: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("files"), list) else None


def json_status(doc: Mapping[str, Any]) -> str:
    status = doc.get("project-status")
    value = status.get("status") if isinstance(status, dict) else None
    return value.lower() if isinstance(value, str) else "active"


def json_times(doc: Mapping[str, Any]) -> dict[str, float | None]:
    """File name -> upload time (None where the page gives none)."""
    return {
        f["filename"]: parse_time(f.get("upload-time"))
        for f in doc.get("files", ())
        if isinstance(f, dict) and isinstance(f.get("filename"), str)
    }


def html_status(data: bytes) -> str:
    for tag in _META.findall(data):
        attrs = _attributes(tag)
        if attrs.get("name", "").lower() == "pypi:project-status":
            return attrs.get("content", "active").strip().lower()
    return "active"


def _attributes(tag: bytes) -> dict[str, str]:
    return {
        m[1].decode("latin-1").lower(): html.unescape(
            (m[2] or m[3] or m[4] or b"").decode("utf-8", "replace")
        )
        for m in _ATTR.finditer(tag)
    }


def _ruling(
    rules: Rules,
    project: str,
    filename: str,
    published: float | None,
    status: str,
    after: float | None = None,
) -> Ruling | None:
    parsed = versions.pypi_file(filename)
    version = parsed[1] if parsed is not None else None
    if status == QUARANTINED:
        return quarantined(versions.PYPI, project, version or filename)
    return rules.judge(versions.PYPI, project, version, published, label=filename, after=after)


def screen_json(data: bytes, project: str, rules: Rules) -> Screened:
    """The JSON project page as the guard serves it."""
    doc = parse_json(data)
    if doc is None:
        return Screened(None)
    named = doc.get("name")
    name = versions.normalize_name(versions.PYPI, named if isinstance(named, str) and named else project)
    status = json_status(doc)
    kept: list[Any] = []
    removed: list[Ruling] = []
    noted: list[Ruling] = []
    for item in doc["files"]:
        filename = item.get("filename") if isinstance(item, dict) else None
        if not isinstance(filename, str):
            kept.append(item)
            continue
        ruling = _ruling(rules, name, filename, parse_time(item.get("upload-time")), status)
        if ruling is not None and ruling.refused:
            removed.append(ruling)
        else:
            kept.append(item)
            if ruling is not None:
                noted.append(ruling)
    dates = json_times(doc)
    links = tuple(f["url"] for f in doc["files"] if isinstance(f, dict) and isinstance(f.get("url"), str))
    body = None
    if removed:
        doc["files"] = kept
        if isinstance(doc.get("versions"), list):
            doc["versions"] = _remaining_versions(doc["versions"], removed, kept, status)
        body = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
    return Screened(body, tuple(removed), noted=tuple(noted), times=dates, status=status, links=links)


def _remaining_versions(listed: list[Any], removed: list[Ruling], kept: list[Any], status: str) -> list[Any]:
    """`versions` without those whose every file was hidden (all of them for a quarantined project)."""
    if status == QUARANTINED:
        return []
    still = {
        parsed[1]
        for item in kept
        if isinstance(item, dict) and (parsed := versions.pypi_file(str(item.get("filename", ""))))
    }
    gone = {v.version for v in removed} - still
    return [
        v
        for v in listed
        if not (isinstance(v, str) and any(versions.same_version(versions.PYPI, v, g) for g in gone))
    ]


def _anchor_filename(attrs: bytes, text: bytes) -> str:
    """The file a link leads to: its URL's last segment, which is what pip and uv download and name the file
    by (PEP 503 wants the link text to be the same; where the URL has none, the text)."""
    m = _HREF.search(attrs)
    href = html.unescape((m[1] or m[2] or m[3]).decode("utf-8", "replace")) if m else ""
    name = unquote(urlsplit(href).path.rsplit("/", 1)[-1])
    return name or html.unescape(re.sub(rb"<[^>]*>", b"", text).decode("utf-8", "replace")).strip()


def screen_html(data: bytes, project: str, rules: Rules, known: Dates | None) -> Screened:
    """The HTML project page as the guard serves it; its upload times come from the JSON form of the same
    page (`known`, None when it could not be had)."""
    status = html_status(data)
    removed: list[Ruling] = []
    noted: list[Ruling] = []
    links: list[str] = []

    def keep_or_drop(match: re.Match[bytes]) -> bytes:
        href = _HREF.search(match["attrs"])
        if href is not None:
            links.append(html.unescape((href[1] or href[2] or href[3]).decode("utf-8", "replace")))
        filename = _anchor_filename(match["attrs"], match["text"])
        published, after = known.of(filename) if known is not None else (None, None)
        ruling = _ruling(rules, project, filename, published, status, after)
        if ruling is not None and ruling.refused:
            removed.append(ruling)
            return b""
        if ruling is not None:
            noted.append(ruling)
        return match[0]

    body = _ANCHOR.sub(keep_or_drop, data)
    changed = body if removed else None
    return Screened(changed, tuple(removed), noted=tuple(noted), status=status, links=tuple(links))
