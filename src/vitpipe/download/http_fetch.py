"""Streamed download of one file over https, retried on transient errors, checked by SHA-256.

Plain ``http://`` is accepted (with a warning unless the host is loopback): the SHA-256 is
mandatory and verified before the file is used, so a tampered or corrupted transfer is refused
either way, and some mirrors only serve http.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Optional


from vitpipe.errors import VitpipeError
from vitpipe.progress import bar as progress_bar

logger = logging.getLogger(__name__)

# Seconds to wait before each retry (exponential backoff); len + 1 attempts in all.
RETRY_DELAYS_S: tuple[float, ...] = (1.0, 2.0, 4.0)
TIMEOUT_S = 30.0
_CHUNK = 1 << 20
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_USER_AGENT = "vitpipe-download (python urllib)"


class _Transient(Exception):
    """A failure worth retrying: reset connection, timeout, HTTP 5xx/429, short body."""


def check_url(url: str) -> None:
    """Refuses anything but http(s) with a host; warns about plain http to a non-loopback host."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise VitpipeError(f"data.source {url!r}: only https:// (or http://) URLs with a host can be "
                           f"downloaded.")
    if parts.scheme == "http" and parts.hostname not in _LOOPBACK:
        logger.warning("%s is plain http: the transfer is not encrypted (data.sha256 still guards "
                       "its content); prefer https:// if the server offers it", url)


def download(url: str, dest: Path, *, sha256: str, max_bytes: Optional[int] = None,
             delays: Optional[Sequence[float]] = None, timeout_s: Optional[float] = None) -> None:
    """Streams ``url`` to ``dest`` and checks its SHA-256; ``dest`` holds the verified file on return.

    Args:
        url: https:// (or http://) address of the file.
        dest: file to write (its directory must exist); removed again on any failure.
        sha256: expected hex digest; a mismatch is refused before the caller can use the file.
        max_bytes: refuse a body larger than this (``None``: no cap).
        delays: seconds to sleep before each retry; default :data:`RETRY_DELAYS_S`.
        timeout_s: connect and per-read timeout; default :data:`TIMEOUT_S`.

    Raises:
        VitpipeError: unreachable host, HTTP error, too many transient failures, checksum mismatch.
    """
    check_url(url)
    delays = RETRY_DELAYS_S if delays is None else tuple(delays)
    timeout = TIMEOUT_S if timeout_s is None else timeout_s
    try:
        for attempt in range(len(delays) + 1):
            try:
                digest = _stream(url, dest, timeout=timeout, max_bytes=max_bytes)
                break
            except _Transient as exc:
                if attempt == len(delays):
                    raise VitpipeError(f"could not download {url} ({exc}) after {attempt + 1} attempts; "
                                       f"try again later, or set data.source to a local directory or "
                                       f"archive.") from None
                logger.warning("download of %s failed (%s); retrying in %.1fs", url, exc, delays[attempt])
                time.sleep(delays[attempt])
        if digest != sha256.lower():
            raise VitpipeError(f"{url}: SHA-256 mismatch: expected {sha256.lower()}, got {digest}; the file "
                               f"is corrupt or has changed. If the new file is the one you want, check it "
                               f"and update data.sha256.")
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    logger.info("downloaded %s (%s bytes, SHA-256 verified)", url, f"{dest.stat().st_size:,}")


def _reason(exc: BaseException) -> str:
    """A short reason for a network error, e.g. ``connection refused``."""
    inner = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(inner, ConnectionRefusedError):
        return "connection refused"
    if isinstance(inner, socket.gaierror):
        return f"host not found: {inner.strerror or inner}"
    if isinstance(inner, (TimeoutError, socket.timeout)):
        return "timed out"
    text = getattr(inner, "strerror", None) or str(inner) or type(inner).__name__
    return text.splitlines()[0]


def _open(url: str, timeout: float) -> http.client.HTTPResponse:
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - scheme checked
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code >= 500 or exc.code == 429:
            raise _Transient(f"HTTP {exc.code} {exc.reason}") from None
        raise VitpipeError(f"{url}: HTTP {exc.code} {exc.reason}; check the URL.") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, (ConnectionResetError, TimeoutError, socket.timeout)):
            raise _Transient(_reason(exc)) from None
        raise VitpipeError(f"could not reach {url} ({_reason(exc)}); check the URL/network, or set "
                           f"data.source to a local directory or archive.") from None
    except (ConnectionResetError, TimeoutError, http.client.HTTPException) as exc:
        raise _Transient(_reason(exc)) from None


def _stream(url: str, dest: Path, *, timeout: float, max_bytes: Optional[int]) -> str:
    """One attempt: writes the body to ``dest`` and returns its SHA-256."""
    hasher, received = hashlib.sha256(), 0
    with _open(url, timeout) as resp:
        length = resp.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        if total is not None and max_bytes is not None and total > max_bytes:
            raise VitpipeError(f"{url}: {total:,} bytes is over the cap of {max_bytes:,} "
                               f"(data.max_extract_gb); raise it if this file is expected.")
        bar = progress_bar(desc=dest.name, total=total, unit="B")
        try:
            with bar, open(dest, "wb") as out:
                while chunk := resp.read(_CHUNK):
                    received += len(chunk)
                    if max_bytes is not None and received > max_bytes:
                        raise VitpipeError(f"{url}: more than {max_bytes:,} bytes, over the cap "
                                           f"(data.max_extract_gb); raise it if this file is expected.")
                    hasher.update(chunk)
                    out.write(chunk)
                    bar.update(len(chunk))
        except (ConnectionResetError, TimeoutError, http.client.HTTPException) as exc:
            raise _Transient(_reason(exc)) from None
    if total is not None and received != total:
        raise _Transient(f"connection closed after {received:,} of {total:,} bytes")
    return hasher.hexdigest()
