"""Registry authentication: the 401 challenge, the token endpoint, and the credentials `minictl login` keeps.

A registry that wants to know who is asking answers 401 with a challenge (distribution's "token" spec):

    WWW-Authenticate: Bearer realm="https://auth.docker.io/token",service="registry.docker.io",
                      scope="repository:library/busybox:pull"

The client asks the realm, a separate token server, for a token covering that scope:

    GET https://auth.docker.io/token?service=registry.docker.io&scope=repository:library/busybox:pull
    Authorization: Basic base64(user:password)          <- only if `minictl login` stored credentials

and repeats its request with `Authorization: Bearer TOKEN`. The token is a JWT signed by the token
server, whose certificate the registry trusts; it lists what it grants, e.g. `"access": [{"type":
"repository", "name": "library/busybox", "actions": ["pull"]}]`. An anonymous client may pull public
repositories; a private one needs credentials. A registry can also answer `Basic realm="..."`: then the
credentials go to the registry itself, on every request.

Credentials live in ROOT/auth.json, mode 0600, shaped like docker's ~/.docker/config.json:

    {"auths": {"127.0.0.1:5000": {"auth": "cHVzaGVyOnNlY3JldA=="}}}      base64 of "user:password"

Traps:
- base64 is an encoding, not encryption: the file's mode 0600 is the only protection (as with docker
  when no credential helper is configured).
- A challenge's values are quoted strings that hold commas (`scope="repository:a/b:pull,push"`), so the
  header cannot be split on commas.
- Token servers answer `token`, or `access_token` (the OAuth2 name), or both; either will do.
- A token is for the host that asked for it. A blob GET is often redirected to storage elsewhere (S3, a
  CDN, with a signature in its URL): the Authorization header must not follow it there (`registry`).
"""

from __future__ import annotations

import base64
import json
import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from ..errors import ContainerError

AUTH_FILE = "auth.json"
_PARAM = re.compile(r'\s*([A-Za-z][\w-]*)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*,?')


class RegistryError(ContainerError):
    """A registry (or its token server) refused, failed, or sent something that does not verify."""


@dataclass(frozen=True)
class Credentials:
    """A user name and password for one registry."""

    username: str
    password: str

    def basic(self) -> str:
        """The Authorization header value: `Basic base64(user:password)`."""
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


@dataclass(frozen=True)
class Challenge:
    """A parsed WWW-Authenticate header: the scheme (`bearer` or `basic`) and its parameters."""

    scheme: str
    params: dict[str, str]


def parse_challenge(header: str) -> Challenge:
    """`Bearer realm="...",service="..."` -> Challenge("bearer", {"realm": ..., "service": ...})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {}
    for match in _PARAM.finditer(rest):
        value = match[2]
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[match[1].lower()] = value
    return Challenge(scheme.lower(), params)


def token_url(challenge: Challenge, scope: str | None, credentials: Credentials | None) -> str:
    """The token request for `scope` (none: just prove the credentials, as `minictl login` does)."""
    realm = challenge.params.get("realm")
    if not realm or urllib.parse.urlsplit(realm).scheme not in ("http", "https"):
        raise RegistryError(f"the registry's challenge names no usable token realm ({realm!r}): "
                             "it does not follow the distribution token spec")
    query = [("service", challenge.params["service"])] if "service" in challenge.params else []
    query += [("scope", scope)] if scope else []
    query += [("account", credentials.username)] if credentials else []
    return realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)


def parse_token(body: bytes, realm: str) -> str:
    """The token in a token server's JSON answer (`token`, or OAuth2's `access_token`)."""
    try:
        answer = json.loads(body)
        token = answer.get("token") or answer.get("access_token")
    except (ValueError, AttributeError):
        token = None
    if not isinstance(token, str) or not token:
        raise RegistryError(f"the token server {realm} answered without a token: it does not follow the "
                             "distribution token spec")
    return token


# --- ROOT/auth.json -------------------------------------------------------------------------------
def _read_auths(root: Path) -> dict:
    path = Path(root) / AUTH_FILE
    try:
        auths = json.loads(path.read_text()).get("auths", {})
    except FileNotFoundError:
        return {}
    except (ValueError, AttributeError):
        raise RegistryError(f"{path} is not valid JSON: fix it or delete it and run 'minictl login' "
                             "again") from None
    return auths if isinstance(auths, dict) else {}


def _write_auths(root: Path, auths: dict) -> None:
    """Replace ROOT/auth.json atomically; the file is created mode 0600 and never exists wider."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{AUTH_FILE}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"auths": auths}, f, indent=2)
    os.replace(tmp, root / AUTH_FILE)


def load_credentials(root: str | Path, registry: str) -> Credentials | None:
    """The credentials `minictl login` stored for `registry` (e.g. `docker.io`), or None."""
    entry = _read_auths(Path(root)).get(registry)
    if not isinstance(entry, dict) or "auth" not in entry:
        return None
    try:
        username, sep, password = base64.b64decode(entry["auth"]).decode().partition(":")
    except ValueError:
        sep = ""
    if not sep:
        raise RegistryError(f"the credentials for {registry} in {Path(root) / AUTH_FILE} are not "
                             f"base64 of user:password: run 'minictl login {registry}' again")
    return Credentials(username, password)


def store_credentials(root: str | Path, registry: str, credentials: Credentials) -> None:
    """Keep `credentials` for `registry` in ROOT/auth.json (mode 0600). Undo: `remove_credentials`."""
    auths = _read_auths(Path(root))
    auths[registry] = {"auth": credentials.basic().removeprefix("Basic ")}
    _write_auths(Path(root), auths)


def remove_credentials(root: str | Path, registry: str) -> bool:
    """Forget the credentials for `registry`; False if there were none."""
    auths = _read_auths(Path(root))
    if auths.pop(registry, None) is None:
        return False
    _write_auths(Path(root), auths)
    return True
