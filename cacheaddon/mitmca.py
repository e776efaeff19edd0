"""mitmproxy's CA and listening address as a confdir holds them, for `cacheaddon env` and `cacheaddon run`.

The CA is created by mitmproxy's own code (CertStore.create_store, what mitmproxy runs at its first start)
when the confdir has none, so that `env` works before the proxy ever ran. `run` creates it the same way
before mitmproxy starts, under one lock: the quick start starts both at once, and two CAs written over each
other would leave clients trusting one while the proxy signs with the other.
"""

from __future__ import annotations

import fcntl
from pathlib import Path

DEFAULT_CONFDIR = "~/.mitmproxy"  # mitmproxy's own default (mitmproxy.options.CONF_DIR)
CA_CERT_NAME = "mitmproxy-ca-cert.pem"
_CA_KEY_NAME = "mitmproxy-ca.pem"  # what mitmproxy checks for before it creates a CA
_LOCK_NAME = ".cacheaddon-ca.lock"


def ensure_ca(confdir: Path, key_size: int | None = None) -> Path:
    """The path of the confdir's CA certificate, creating the CA first if there is none (with mitmproxy's
    key_size, default 2048). Raises OSError."""
    if not (confdir / _CA_KEY_NAME).exists():
        from mitmproxy import certs, options

        confdir.mkdir(parents=True, exist_ok=True)
        with open(confdir / _LOCK_NAME, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
            if not (confdir / _CA_KEY_NAME).exists():
                certs.CertStore.create_store(confdir, options.CONF_BASENAME, key_size or options.KEY_SIZE)
    return confdir / CA_CERT_NAME


def listen_address(confdir: Path) -> tuple[str, int]:
    """Where `cacheaddon run` with this confdir listens unless its command line says otherwise: the
    confdir's config.yaml (listen_host, listen_port) read by mitmproxy's own loader, else 127.0.0.1:8080.
    Raises ValueError for a config.yaml mitmproxy would refuse."""
    from mitmproxy import exceptions, options, optmanager

    opts = options.Options()
    try:
        optmanager.load_paths(opts, str(confdir / "config.yaml"), str(confdir / "config.yml"))
    except exceptions.OptionsError as exc:
        raise ValueError(str(exc)) from None
    host = opts.listen_host if opts.listen_host not in ("", "0.0.0.0", "::") else "127.0.0.1"
    return host, opts.listen_port or 8080
