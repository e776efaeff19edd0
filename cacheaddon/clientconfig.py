"""What clients need to use the cache: configuration snippets, environment variables, the CA bundle text."""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from urllib.parse import urlsplit

from cacheaddon.registries import PRESETS


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _plain_http(url: str) -> str | None:
    """The host when `url` is plain HTTP to another machine, which clients accept only when told to."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return host if parts.scheme == "http" and not _is_loopback(host) else None


def _pip(url: str) -> str:
    lines = [
        "# ~/.config/pip/pip.conf (or /etc/pip.conf, or the file named by PIP_CONFIG_FILE)",
        "[global]",
        f"index-url = {url}",
    ]
    # pip trusts plain HTTP only on loopback addresses (its "secure origins").
    if host := _plain_http(url):
        lines.append(f"trusted-host = {host}")
    return "\n".join(lines)


def _uv(url: str) -> str:
    # uv takes plain HTTP as it is (its allow-insecure-host only switches off certificate checks).
    return f"""# ~/.config/uv/uv.toml (or [[tool.uv.index]] in pyproject.toml; or UV_DEFAULT_INDEX={url})
[[index]]
url = "{url}"
default = true"""


def _npmrc(client: str) -> Callable[[str], str]:
    def render(url: str) -> str:
        return f"# .npmrc in the project, or ~/.npmrc ({client} config set registry {url})\nregistry={url}"

    return render


def _npm(url: str) -> str:
    # npm writes each tarball's URL into package-lock.json ("resolved"): through an endpoint that is the
    # endpoint's address, which `npm ci` on a machine without the cache cannot reach (and npm 12's default
    # allow-remote=none refuses, as a tarball outside its registry). Without "resolved", npm finds each
    # tarball through whatever registry is configured where it installs, and still checks the integrity.
    return _npmrc("npm")(url) + "\nomit-lockfile-registry-resolved=true"


def _yarn(url: str) -> str:
    # Yarn Berry wants the server without a trailing slash and refuses plain HTTP to unlisted hosts.
    server = url.rstrip("/")
    lines = [
        f"# .yarnrc.yml in the project, or ~/.yarnrc.yml (Yarn 1: yarn config set registry {server})",
        f'npmRegistryServer: "{server}"',
    ]
    parts = urlsplit(server)
    if parts.scheme == "http":
        lines += ["unsafeHttpWhitelist:", f'  - "{parts.hostname}"']
    return "\n".join(lines)


def _setuptools(url: str) -> str:
    return f"# ~/.pydistutils.cfg (or setup.cfg next to setup.py)\n[easy_install]\nindex_url = {url}"


def _buildout(url: str) -> str:
    return f"# ~/.buildout/default.cfg (or the [buildout] section of buildout.cfg)\n[buildout]\nindex = {url}"


def _maven(url: str) -> str:
    return f"""<!-- ~/.m2/settings.xml (or the file given to mvn -s) -->
<settings xmlns="http://maven.apache.org/SETTINGS/1.2.0">
  <mirrors>
    <mirror>
      <id>cacheaddon</id>
      <name>cacheaddon cache of Maven Central</name>
      <url>{url}</url>
      <mirrorOf>central</mirrorOf>
    </mirror>
  </mirrors>
</settings>"""


def _gem(url: str) -> str:
    return f"""# ~/.gemrc (or: gem sources --add {url} --remove https://rubygems.org/;
# Bundler: bundle config set mirror.https://rubygems.org {url})
---
:sources:
- {url}"""


def _nuget(url: str) -> str:
    # NuGet 6.12+ refuses plain-HTTP sources (NU1302) unless they are marked as allowed.
    insecure = ' allowInsecureConnections="true"' if urlsplit(url).scheme == "http" else ""
    return f"""<!-- NuGet.Config next to the solution (or ~/.nuget/NuGet/NuGet.Config) -->
<configuration>
  <packageSources>
    <clear />
    <add key="cacheaddon" value="{url}" protocolVersion="3"{insecure} />
  </packageSources>
</configuration>"""


def _cargo(url: str) -> str:
    # A sparse index (cargo 1.68+): its config.json names the download host, which the endpoint rewrites.
    return (
        "# ~/.cargo/config.toml (or .cargo/config.toml in the project; $CARGO_HOME/config.toml)\n"
        '[source.crates-io]\nreplace-with = "cacheaddon"\n\n'
        f'[source.cacheaddon]\nregistry = "sparse+{url}"'
    )


def _go(url: str) -> str:
    # No ",direct" fallback: it would fetch a module the endpoint cannot serve from its VCS, around the cache.
    # The go command asks GOPROXY for the checksum database too (/sumdb/...), so that comes through as well.
    comment = f"# go env's file (go env -w writes it; or GOPROXY={url} in the environment)"
    return f"{comment}\ngo env -w GOPROXY={url}"


@dataclass(frozen=True)
class Client:
    """A package client: which registry preset it uses, at which path, and how its configuration looks."""

    name: str
    registry: str
    path: str
    render: Callable[[str], str]


CLIENTS: Mapping[str, Client] = MappingProxyType(
    {
        c.name: c
        for c in (
            Client("pip", "pypi", "/simple/", _pip),
            Client("uv", "pypi", "/simple/", _uv),
            Client("npm", "npm", "/", _npm),
            Client("yarn", "yarn", "/", _yarn),
            Client("pnpm", "npm", "/", _npmrc("pnpm")),
            Client("setuptools", "pypi", "/simple/", _setuptools),
            Client("buildout", "pypi", "/simple/", _buildout),
            # The reverse endpoint forwards all of repo1.maven.org, whose repository lives under /maven2/.
            Client("maven", "maven", "/maven2/", _maven),
            Client("gem", "rubygems", "/", _gem),
            Client("nuget", "nuget", "/v3/index.json", _nuget),
            Client("cargo", "crates", "/", _cargo),
            Client("go", "golang", "", _go),
        )
    }
)


def client_url(client: str, endpoint: str | None = None) -> str:
    """The URL `client` should use: the endpoint (default: the preset's local port) plus the client's path.

    An endpoint that already has a path is taken as the full URL.
    """
    c = CLIENTS[client]
    if endpoint is None:
        return f"http://127.0.0.1:{PRESETS[c.registry].port}{c.path}"
    try:
        parts = urlsplit(endpoint)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as e:
        raise ValueError(f"--endpoint: invalid URL {endpoint!r} ({e})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(
            f"--endpoint: expected an http:// or https:// URL such as http://127.0.0.1:8081, got {endpoint!r}"
        )
    if parts.path in ("", "/"):
        return f"{parts.scheme}://{parts.netloc}{c.path}"
    return endpoint


def snippet(client: str, endpoint: str | None = None) -> str:
    """The configuration text for `client`; its first line is a comment naming the file it belongs in."""
    return CLIENTS[client].render(client_url(client, endpoint))


# --- `cacheaddon env`: variables a CI job evals, and the CA bundle they point at ---

DEFAULT_PROXY = "http://127.0.0.1:8080"


def check_proxy_url(proxy: str) -> None:
    """Raises ValueError, naming `--proxy`, unless `proxy` is an http(s)://host[:port] URL."""
    try:
        parts = urlsplit(proxy)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as e:
        raise ValueError(f"--proxy: invalid URL {proxy!r} ({e})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise ValueError(f"--proxy: expected a URL such as {DEFAULT_PROXY}, got {proxy!r}")


# Loopback only: clients must reach the local reverse endpoints directly (through the forward proxy they
# would loop back into it), and any wider entry could let registry traffic bypass the cache.
NO_PROXY = "localhost,127.0.0.1,::1"

PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy")
# Yarn Berry reads no *_PROXY or CA variable of its own accord, only its YARN_* settings.
YARN_PROXY_VARIABLES = ("YARN_HTTPS_PROXY", "YARN_HTTP_PROXY")

# Each replaces the client's roots rather than adding to them (except NODE_EXTRA_CA_CERTS), hence a bundle
# of the system CAs plus mitmproxy's. uv honours SSL_CERT_FILE with its default TLS roots; its
# system-certs setting would use the OS store, which lacks mitmproxy's CA.
CA_VARIABLES = (
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "PIP_CERT",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "npm_config_cafile",
    "YARN_HTTPS_CA_FILE_PATH",
    "CARGO_HTTP_CAINFO",
    "GIT_SSL_CAINFO",
)


def env_lines(proxy: str, bundle: str) -> list[str]:
    """POSIX shell `export` lines for the proxy, NO_PROXY and CA variables, values quoted for `eval`."""
    values: dict[str, str] = {name: proxy for name in PROXY_VARIABLES + YARN_PROXY_VARIABLES}
    values |= {"NO_PROXY": NO_PROXY, "no_proxy": NO_PROXY}
    values |= {name: bundle for name in CA_VARIABLES}
    return [f"export {name}={shlex.quote(value)}" for name, value in values.items()]


_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL)


def pem_certificates(text: str) -> list[str]:
    """The PEM certificate blocks in `text`, normalised to "\\n" line ends (comments and keys dropped)."""
    return [m.group(0).replace("\r\n", "\n") for m in _PEM_CERT.finditer(text)]


# The first line of every bundle `cacheaddon env` writes: such a file is never read back as "the system's CAs"
# (after an earlier `eval`, SSL_CERT_FILE names one, and it would carry an old mitmproxy CA forward).
BUNDLE_MARKER = "# cacheaddon CA bundle: system CAs + mitmproxy's CA"


def bundle_text(*sources: Iterable[str]) -> str:
    """One PEM bundle of the certificates from `sources`, in order, each certificate once."""
    # dict keeps first-seen order; a system store that already holds mitmproxy's CA must not list it twice.
    unique = dict.fromkeys(cert for source in sources for cert in source)
    return BUNDLE_MARKER + "\n" + "".join(f"{cert}\n" for cert in unique)
