"""The distribution API client: an image's manifest and blobs from a registry, each verified by digest.

A registry speaks HTTP (the OCI distribution spec, formerly the Docker Registry HTTP API V2):

    GET /v2/                               do you speak v2, and who must I be? (200, or 401 and a challenge)
    GET /v2/NAME/manifests/TAG|DIGEST      a manifest, or an index of manifests, one per platform
    GET /v2/NAME/blobs/DIGEST              a config or a layer (often a 307 to blob storage elsewhere)

A tag of a multi-platform image resolves in two hops: the tag names an index (OCI) or manifest list
(Docker), whose entries carry a platform (`os`, `architecture`, `variant`); the entry for this host's
platform names a manifest; the manifest names a config and the layers. Every hop is a digest, the sha256
of the exact bytes, so every hop is checked: the first against the reference's `@sha256:...` (else the
registry's Docker-Content-Digest header), the manifest against its index entry, each blob against its
descriptor in the manifest (digest and size). Nothing between the registry's disk and ours can change a
byte unseen; a tag, though, is only as trustworthy as the registry that maps it to a digest.

Transport: http.client, one connection per request, blobs read in 64 KiB chunks and never held whole.
Registries on loopback (127.0.0.0/8, localhost, ::1) are spoken to in plain HTTP, like Docker's default
insecure registries; all others over HTTPS with verified certificates, unless `insecure=True`
(`minictl pull --insecure`) or $MINI_CONTAINER_INSECURE_REGISTRIES (HOST[:PORT],...) names the host,
which switches it to plain HTTP. A registry with a private CA: SSL_CERT_FILE names the CA's certificate.
What the documents say (media types, descriptors, the index's platforms) is checked by `oci`, the same
checks an image loaded from a file gets.

Traps:
- Accept decides what comes back: a client that does not list the index types gets whatever single
  manifest the registry picks (or a converted one, whose digest is not the one pushed).
- Content-Type, not the JSON's `mediaType` (optional in OCI), says what a manifest is.
- A redirect to another host must not carry the Authorization header: the token is for the registry,
  and blob storage URLs carry their own signature. `open_url` drops it when scheme or host changes.
- `arm64` images are variant `v8` whether or not the index says so; `arm` means `v7`.
- A digest check is worth something only before the data is used: a blob is verified as its last chunk
  arrives, and the store keeps it only then.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import json
import os
import ssl
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import InvalidArgumentError
from . import oci
from .reference import DEFAULT_REGISTRY, DOCKER_HUB_API, Reference
from .registry_auth import Challenge, Credentials, RegistryError, parse_challenge, parse_token, token_url

ACCEPT = ", ".join(oci.INDEX_TYPES + oci.MANIFEST_TYPES)
MAX_MANIFEST_BYTES = 4 << 20  # containerd's bound: a manifest is read whole, so it must be bounded
CHUNK_BYTES = 64 << 10
TIMEOUT_SECONDS = 30
MAX_REDIRECTS = 10
INSECURE_ENV = "MINI_CONTAINER_INSECURE_REGISTRIES"
USER_AGENT = "mini-container/0.1"
_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64"}  # kernel names for Go's
_IMPLIED_VARIANT = {"arm64": "v8", "arm": "v7"}  # what an architecture without a variant means
_HOST_VARIANT = {"armv6l": "v6", "armv7l": "v7"}


# --- platforms ---------------------------------------------------------------------------------------
def normalize_platform(platform: oci.Platform) -> oci.Platform:
    """Kernel names to Go's (x86_64 -> amd64, aarch64 -> arm64), and the implied variant filled in."""
    arch = _ALIASES.get(platform.architecture, platform.architecture)
    return oci.Platform(platform.os, arch, platform.variant or _IMPLIED_VARIANT.get(arch, ""))


def parse_platform(text: str) -> oci.Platform:
    """`os/arch[/variant]`, e.g. `linux/arm64`; InvalidArgumentError if it has another shape."""
    parts = text.lower().split("/")
    if not 2 <= len(parts) <= 3 or not all(parts):
        raise InvalidArgumentError(f"invalid platform {text!r}: expected OS/ARCH[/VARIANT], "
                                   "e.g. linux/amd64 or linux/arm64/v8")
    return normalize_platform(oci.Platform(*parts))


def host_platform() -> oci.Platform:
    """This machine's: linux/amd64 on x86_64, linux/arm64/v8 on aarch64."""
    variant = _HOST_VARIANT.get(os.uname().machine, "")
    return normalize_platform(oci.Platform("linux", oci.host_architecture(), variant))


def platform_matches(wanted: oci.Platform, offered: oci.Platform) -> bool:
    """Whether an image built for `offered` is what `wanted` asks for (no variant asked: any will do)."""
    offered = normalize_platform(offered)
    return ((wanted.os, wanted.architecture) == (offered.os, offered.architecture)
            and wanted.variant in ("", offered.variant))


@dataclass(frozen=True)
class ResolvedManifest:
    """A single-platform image manifest, fetched and verified: its digest, its bytes, what it says."""

    digest: str
    data: bytes
    manifest: oci.Manifest
    index_digest: str | None = None  # the index it was chosen from, when the reference named one


# --- transport --------------------------------------------------------------------------------------
def plain_http(host: str, insecure: bool = False) -> bool:
    """Whether to speak plain HTTP to `host` (HOST[:PORT]): on loopback, or when told to."""
    if insecure or host in os.environ.get(INSECURE_ENV, "").replace(" ", "").split(","):
        return True
    name = urllib.parse.urlsplit(f"//{host}").hostname or ""
    try:
        return name == "localhost" or ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _send(method: str, url: str, headers: dict[str, str]) -> http.client.HTTPResponse:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.netloc, timeout=TIMEOUT_SECONDS,
                                           context=ssl.create_default_context())
    elif parts.scheme == "http":
        conn = http.client.HTTPConnection(parts.netloc, timeout=TIMEOUT_SECONDS)
    else:
        raise RegistryError(f"cannot fetch {url}: only http and https URLs are followed")
    try:
        # "Connection: close" hands the socket to the response: closing the response closes it.
        conn.request(method, urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, "")),
                     headers={**headers, "User-Agent": USER_AGENT, "Connection": "close"})
        return conn.getresponse()
    except (OSError, http.client.HTTPException) as e:
        conn.close()
        if isinstance(e, ssl.SSLCertVerificationError):
            hint = "; signed by a private CA? point SSL_CERT_FILE at its certificate"
        else:
            hint = "; if it serves plain HTTP, pass --insecure" if isinstance(e, ssl.SSLError) else ""
        raise RegistryError(f"cannot reach {parts.scheme}://{parts.netloc}: {e}{hint}") from None


def open_url(method: str, url: str, headers: dict[str, str]) -> http.client.HTTPResponse:
    """Send a request and follow redirects (301, 302, 303, 307, 308); Authorization stays on its host."""
    headers = dict(headers)
    for _ in range(MAX_REDIRECTS + 1):
        response = _send(method, url, headers)
        location = response.getheader("Location")
        if response.status not in (301, 302, 303, 307, 308) or not location:
            return response
        response.close()
        target = urllib.parse.urljoin(url, location)
        if urllib.parse.urlsplit(target)[:2] != urllib.parse.urlsplit(url)[:2]:
            headers.pop("Authorization", None)
        url = target
    raise RegistryError(f"more than {MAX_REDIRECTS} redirects, the last to {url}: refused")


def _read(response: http.client.HTTPResponse, limit: int, what: str) -> bytes:
    try:
        return response.read(limit)
    except (OSError, http.client.HTTPException) as e:
        raise RegistryError(f"{what}: the download broke off ({e!r}): try again") from None


def _error_text(body: bytes) -> str:
    """`: CODE message` from a registry's {"errors": [{"code", "message"}]} body, or nothing."""
    try:
        errors = json.loads(body)["errors"]
        return "".join(f": {e.get('code', '')} {e.get('message', '')}".rstrip() for e in errors[:3])
    except (ValueError, KeyError, TypeError, AttributeError):
        return ""


class _Session:
    """Requests to one registry: each carries the token for its scope, fetched when a 401 asks for it."""

    def __init__(self, registry: str, credentials: Credentials | None, insecure: bool):
        self.registry, self.credentials = registry, credentials
        self.host = DOCKER_HUB_API if registry == DEFAULT_REGISTRY else registry
        self.base = f"{'http' if plain_http(self.host, insecure) else 'https'}://{self.host}"
        self._authorization: dict[str | None, str] = {}  # by scope, for this run

    def get(self, path: str, scope: str | None, what: str,
            accept: str | None = None) -> http.client.HTTPResponse:
        """GET `path`, answering one auth challenge; anything but 200 is a RegistryError about `what`."""
        headers = {"Accept": accept} if accept else {}
        response = self._get(path, headers, scope)
        if response.status == 401 and response.getheader("WWW-Authenticate"):
            response.close()  # a cached token may have expired: ask for a new one, once
            self._authorization[scope] = self._answer(parse_challenge(response.getheader("WWW-Authenticate")),
                                                      scope)
            response = self._get(path, headers, scope)
        if response.status != 200:
            raise self._failure(response, what)
        return response

    def _get(self, path: str, headers: dict[str, str], scope: str | None) -> http.client.HTTPResponse:
        authorization = self._authorization.get(scope)
        return open_url("GET", self.base + path, {**headers, **({"Authorization": authorization}
                                                                if authorization else {})})

    def _answer(self, challenge: Challenge, scope: str | None) -> str:
        """The Authorization header that answers `challenge`: basic credentials, or a bearer token."""
        login = f"run 'minictl login {self.registry}'"
        if challenge.scheme == "basic":
            if not self.credentials:
                raise RegistryError(f"registry {self.host} asks for a user name and password: {login}")
            return self.credentials.basic()
        if challenge.scheme != "bearer":
            raise RegistryError(f"registry {self.host} asks for {challenge.scheme!r} authentication; "
                                "only Bearer (token) and Basic are supported")
        url = token_url(challenge, scope, self.credentials)
        realm = challenge.params["realm"]
        basic = {"Authorization": self.credentials.basic()} if self.credentials else {}
        response = open_url("GET", url, basic)
        with response:
            body = _read(response, MAX_MANIFEST_BYTES, f"token from {realm}")
        if response.status in (401, 403):
            who = (f"refused user {self.credentials.username!r}" if self.credentials
                   else "asks for credentials")
            raise RegistryError(f"registry {self.host}: its token server {realm} {who} "
                                f"({response.status}{_error_text(body)}): {login}")
        if response.status != 200:
            raise RegistryError(f"registry {self.host}: its token server {realm} answered {response.status} "
                                f"{response.reason}{_error_text(body)}: try again later")
        return "Bearer " + parse_token(body, realm)

    def _failure(self, response: http.client.HTTPResponse, what: str) -> RegistryError:
        with response:
            detail = f"{response.status}{_error_text(_read(response, 64 << 10, what))}"
        if response.status in (401, 403):
            user = self.credentials.username if self.credentials else None
            who, hint = ((f" to user {user!r}", "check the credentials") if user
                         else ("", "if the repository is private"))
            return RegistryError(f"access to {what} denied{who} by {self.host} ({detail}): {hint}, "
                                 f"run 'minictl login {self.registry}'")
        if response.status == 404:
            return RegistryError(f"{what} not found on {self.host} ({detail}): check the name and tag")
        return RegistryError(f"registry {self.host} answered {response.status} {response.reason} for "
                             f"{what} ({detail}): try again later, or ask the registry's operator")


def check_login(registry: str, credentials: Credentials, insecure: bool = False) -> None:
    """Prove `credentials` on `registry` (GET /v2/, answering its challenge), as `docker login` does."""
    _Session(registry, credentials, insecure).get("/v2/", None, f"the API of {registry}").close()


# --- manifests and blobs ------------------------------------------------------------------------------
def _verify(data: bytes, expected: str | None, size: int | None, what: str) -> str:
    """The digest of `data`, which must be `expected` (and `size` bytes long) when they are known."""
    actual = oci.sha256_digest(data)
    if expected is not None:
        oci.check_digest(expected, what)
    if (expected and actual != expected) or (size is not None and len(data) != size):
        raise oci.DigestMismatchError(
            f"{what}: the registry sent {len(data)} bytes with digest {actual}, expected {expected}"
            f"{f' ({size} bytes)' if size is not None else ''}: refused (altered in storage or in transit)")
    return actual


def _is_index(content_type: str, data: bytes) -> bool:
    """Whether a manifest response is an index: its Content-Type says, else its JSON's shape."""
    if content_type in oci.INDEX_TYPES + oci.MANIFEST_TYPES:
        return content_type in oci.INDEX_TYPES
    try:
        return oci.document_type(json.loads(data)) in oci.INDEX_TYPES
    except (ValueError, AttributeError):
        return False  # parse_manifest names what is wrong with it


def select_platform(index: oci.Index, wanted: oci.Platform, what: str) -> oci.Descriptor:
    """The first entry of an index built for `wanted`; the error lists the platforms there are."""
    for entry in index.manifests:
        if entry.platform and platform_matches(wanted, entry.platform):
            return entry
    offered = ", ".join(str(normalize_platform(e.platform)) for e in index.manifests if e.platform) or "none"
    raise RegistryError(f"{what} has no image for {wanted} (it has: {offered}): choose one with --platform")


class RegistryClient:
    """One repository of one registry, as a puller sees it: `resolve` a reference, `fetch_blob`s."""

    def __init__(self, reference: Reference, credentials: Credentials | None = None, insecure: bool = False):
        self.reference = reference
        self._session = _Session(reference.registry, credentials, insecure)
        self._scope = f"repository:{reference.repository}:pull"

    def resolve(self, platform: oci.Platform | None = None) -> ResolvedManifest:
        """The manifest the reference names, through an index to `platform` (default: the host's)."""
        ref = self.reference
        data, content_type, digest = self._manifest(ref.digest or ref.tag or "latest", ref.digest)
        if not _is_index(content_type, data):
            return ResolvedManifest(digest, data, oci.parse_manifest(data, f"manifest {digest} of {ref}"))
        wanted = platform or host_platform()
        entry = select_platform(oci.parse_index(data, f"index {digest} of {ref}"), wanted, str(ref))
        entry_data, _, _ = self._manifest(entry.digest, entry.digest, entry.size)
        manifest = oci.parse_manifest(entry_data, f"manifest {entry.digest} ({wanted}) of {ref}")
        return ResolvedManifest(entry.digest, entry_data, manifest, digest)

    def fetch_blob(self, descriptor: oci.Descriptor) -> Iterator[bytes]:
        """Request a blob and return its bytes in chunks; a DigestMismatchError naming the digest comes
        instead of the end of the iteration if the size or the digest is not the descriptor's."""
        what = f"blob {descriptor.digest} of {self.reference.name}"
        response = self._session.get(f"/v2/{self.reference.repository}/blobs/{descriptor.digest}",
                                     self._scope, what)
        return _verified(response, descriptor, what)

    def _manifest(self, target: str, expected: str | None, size: int | None = None) -> tuple[bytes, str, str]:
        """GET a manifest by tag or digest: its bytes, Content-Type and verified digest."""
        what = f"manifest {self.reference.name}{'@' if ':' in target else ':'}{target}"
        response = self._session.get(f"/v2/{self.reference.repository}/manifests/{target}", self._scope, what,
                                     accept=ACCEPT)
        with response:
            data = _read(response, MAX_MANIFEST_BYTES + 1, what)
            content_type = (response.getheader("Content-Type") or "").partition(";")[0].strip()
            announced = response.getheader("Docker-Content-Digest")
        if len(data) > MAX_MANIFEST_BYTES:
            raise RegistryError(f"{what} is larger than {MAX_MANIFEST_BYTES} bytes: refused")
        return data, content_type, _verify(data, expected or announced, size, what)


def _verified(response: http.client.HTTPResponse, descriptor: oci.Descriptor, what: str) -> Iterator[bytes]:
    hasher, size = hashlib.sha256(), 0
    with response:
        while chunk := _read(response, CHUNK_BYTES, what):
            size += len(chunk)
            if size > descriptor.size:
                raise oci.DigestMismatchError(f"{what}: the registry sent more than the {descriptor.size} "
                                              "bytes the manifest declares: refused")
            hasher.update(chunk)
            yield chunk
    actual = f"sha256:{hasher.hexdigest()}"
    if size != descriptor.size or actual != descriptor.digest:
        raise oci.DigestMismatchError(f"{what}: the registry sent {size} bytes with digest {actual}, "
                                      f"expected {descriptor.size} bytes: refused (corrupted in storage or "
                                      "in transit)")
