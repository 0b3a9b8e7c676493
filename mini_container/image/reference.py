"""Image references: `busybox`, `busybox:1.36`, `alpine@sha256:...`, `127.0.0.1:5000/team/app:v1`.

The grammar is Docker's (distribution/reference):

    reference  := name [ ":" tag ] [ "@" digest ]
    name       := [ domain "/" ] component ( "/" component )*
    domain     := host [ ":" port ]         -- the first part is a domain only if it holds "." or ":",
                                               or is "localhost"; else it is part of the repository
    component  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
    tag        := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
    digest     := "sha256:" 64 hex digits   (or another algorithm: ALGO ":" HEX)

Docker Hub's defaults fill what is left out: the registry `docker.io`, the `library/` namespace for
one-component names on it, and the tag `latest` when neither tag nor digest is given. So `busybox`
means `docker.io/library/busybox:latest`, and its registry API lives at `registry-1.docker.io`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import InvalidArgumentError

DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"
DOCKER_HUB_API = "registry-1.docker.io"

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_DOMAIN = rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_REFERENCE = re.compile(
    rf"^(?P<name>(?:(?P<domain>{_DOMAIN})/)?{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@(?P<digest>[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[0-9a-fA-F]{32,}))?$"
)
_SHA256 = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class Reference:
    """A parsed, normalised image reference."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """`docker.io/library/busybox`: the registry and the repository."""
        return f"{self.registry}/{self.repository}"

    @property
    def api_host(self) -> str:
        """The host that serves the registry API (Docker Hub's is not docker.io itself)."""
        return DOCKER_HUB_API if self.registry == DEFAULT_REGISTRY else self.registry

    @property
    def familiar_name(self) -> str:
        """The short name people type: `busybox`, `team/app`, `127.0.0.1:5000/team/app`."""
        if self.registry != DEFAULT_REGISTRY:
            return self.name
        return self.repository.removeprefix("library/")

    @property
    def familiar(self) -> str:
        """The short form of the whole reference: `busybox:latest`, `alpine@sha256:...`."""
        return self.familiar_name + self._suffix()

    def __str__(self) -> str:
        return self.name + self._suffix()

    def _suffix(self) -> str:
        return (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.registry, self.repository, self.tag, digest)


def parse(text: str) -> Reference:
    """Parse and normalise `text`; InvalidArgumentError names what does not fit the grammar."""
    match = _REFERENCE.match(text)
    if not match or len(match["name"]) > 255:
        raise InvalidArgumentError(
            f"invalid image reference {text!r}: expected [REGISTRY/]NAME[:TAG][@sha256:DIGEST] "
            "with a lower-case name, e.g. busybox:1.36 or 127.0.0.1:5000/team/app:v1")
    domain, name = match["domain"], match["name"]
    if domain and ("." in domain or ":" in domain or domain == "localhost" or domain.startswith("[")):
        repository = name[len(domain) + 1:]
    else:
        domain, repository = DEFAULT_REGISTRY, name
    if any(c.isupper() for c in repository):
        raise InvalidArgumentError(f"invalid image reference {text!r}: repository names must be lower case")
    if domain == "index.docker.io":
        domain = DEFAULT_REGISTRY
    if domain == DEFAULT_REGISTRY and "/" not in repository:
        repository = f"library/{repository}"
    digest = match["digest"]
    if digest and digest.startswith("sha256:") and not _SHA256.match(digest):
        raise InvalidArgumentError(f"invalid image reference {text!r}: "
                                   "a sha256 digest is 64 lower-case hex digits")
    tag = match["tag"] or (None if digest else DEFAULT_TAG)
    return Reference(domain, repository, tag, digest)
