"""Credentials of the graph store: never written to disk, never printed.

A MongoDB URL may carry a password (``mongodb://user:PASSWORD@host/db``). affcons keeps the URL *without* its
password in every config, summary, attribute and message, and hands the password to the processes that connect
through the environment variable :data:`PASSWORD_ENV`: the driver sets it for its own worker processes (daisy's
local workers inherit it; srun, sbatch and bsub forward the environment). A password comes from, in this order:
the URL given on the command line or in a config file, a credentials file (``--graph-credentials FILE``: the
password on its first line), or :data:`PASSWORD_ENV` set by the user.

:func:`redact` removes passwords from any text (URLs with or without a user name, ``@`` inside passwords,
``mongodb+srv``, ``password=`` query options); every error message that may quote a URL goes through it.
"""

import os
import re
from pathlib import Path
from urllib.parse import quote, unquote

from affcons.errors import ConfigError

#: The environment variable that carries the graph store's password to the processes that connect.
PASSWORD_ENV = "AFFCONS_GRAPH_PASSWORD"

# scheme://userinfo@host... ; userinfo runs to the last "@" before the host, so an "@" inside a password is covered
_URL = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^\s'\"<>]*)@(?P<rest>[^\s'\"<>@/?]*)")
_QUERY_PASSWORD = re.compile(r"(?i)((?:password|pwd)=)[^&\s'\"]*")


def _redact_match(match: re.Match) -> str:
    userinfo = match.group("userinfo")
    user, colon, _ = userinfo.partition(":")
    return f"{match.group('scheme')}{user}{':***' if colon else ''}@{match.group('rest')}"


def redact(text: str) -> str:
    """``text`` with the password of every URL in it (and every ``password=`` option) replaced by ``***``."""
    return _QUERY_PASSWORD.sub(r"\1***", _URL.sub(_redact_match, str(text)))


def split_password(url: str) -> tuple[str, str | None]:
    """``(url without its password, the password decoded, or None)``; the user name stays."""
    match = _URL.search(url)
    if match is None or ":" not in match.group("userinfo"):
        return url, None
    user, _, password = match.group("userinfo").partition(":")
    without = url[: match.start()] + f"{match.group('scheme')}{user}@{match.group('rest')}" + url[match.end() :]
    return without, unquote(password)


def with_password(url: str, password: str | None) -> str:
    """``url`` with ``password`` inserted after its user name (``url`` must name a user when a password is given)."""
    if not password:
        return url
    match = _URL.search(url)
    if match is None:
        raise ConfigError(
            f"{redact(url)}: a graph store password needs a user name in the URL (mongodb://USER@host/db)"
        )
    user = match.group("userinfo").partition(":")[0]
    userinfo = f"{user}:{quote(password, safe='')}"
    return url[: match.start()] + f"{match.group('scheme')}{userinfo}@{match.group('rest')}" + url[match.end() :]


def read_credentials(path: str | Path) -> str:
    """The password in a credentials file (its first line); the file must not be readable by others."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"graph credentials file {path}: {error.strerror}") from None
    if mode & 0o077:
        raise ConfigError(f"graph credentials file {path} is readable by others (mode {mode & 0o777:o}); chmod 600 it")
    password = text.splitlines()[0].strip() if text.strip() else ""
    if not password:
        raise ConfigError(f"graph credentials file {path} is empty: write the password on its first line")
    return password


def publish_password(password: str | None) -> None:
    """Hand ``password`` to the worker processes this process starts (:data:`PASSWORD_ENV`)."""
    if password:
        os.environ[PASSWORD_ENV] = password


def connect_url(url: str, credentials: str | None = None) -> str:
    """The URL to connect with: ``url`` plus the password from :data:`PASSWORD_ENV`, else from the ``credentials``
    file; ``url`` itself when it names no user or no password is found."""
    if split_password(url)[1] is not None or "@" not in url:
        return url
    password = os.environ.get(PASSWORD_ENV) or (read_credentials(credentials) if credentials else None)
    return with_password(url, password)
