"""A private registry on loopback for the pull tests, and the small fakes that inject faults.

- `build_layout`: a multi-platform OCI image layout made in Python (an index over linux/amd64 and
  linux/arm64/v8, a shared base layer and one small layer per platform that names its platform).
- `TokenServer`: a token endpoint (the distribution "token" auth spec) that signs real JWTs (ES256, the
  signing certificate in the `x5c` header, which the registry checks against its `rootcertbundle`),
  checks basic credentials, and can be told to refuse anonymous clients.
- `Registry`: Debian's `docker-registry serve` on 127.0.0.1 with that token auth, storage in a temp dir.
- `seed`: `skopeo copy --all` of the layout into the registry, authenticating as the pusher.
- `FakeRegistry` and `BlobServer`: a tiny registry that answers a fixed status (a 500), or serves an
  image whose blob GETs redirect to a blob server on 127.0.0.2 that records the request headers.

Everything listens on loopback only, and each server is stopped by its owner (the registry by its pid).
"""

from __future__ import annotations

import base64
import datetime
import gzip
import hashlib
import io
import json
import secrets
import shutil
import socket
import subprocess
import tarfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
SERVICE, ISSUER = "mini-container-test-registry", "mini-container-test-tokens"
PUSHER = ("pusher", "push-secret")
READER = ("reader", "read-secret")


def require(binary: str, package: str) -> str:
    """The path of `binary`, or a failure that says which Debian package provides it."""
    path = shutil.which(binary)
    if not path:
        pytest.fail(f"{binary} not found: the registry tests need it (apt-get install {package})")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- the OCI layout -----------------------------------------------------------------------------
@dataclass
class PlatformImage:
    platform: str  # os/arch[/variant]
    manifest: bytes
    config: bytes
    layers: list[bytes]  # gzip blobs, bottom first

    @property
    def digest(self) -> str:
        return sha256(self.manifest)

    @property
    def layer_digests(self) -> list[str]:
        return [sha256(layer) for layer in self.layers]


@dataclass
class Layout:
    path: Path
    tag: str
    index: bytes
    images: dict[str, PlatformImage]  # by platform

    @property
    def index_digest(self) -> str:
        return sha256(self.index)


def _tar_gz(files: dict[str, bytes]) -> tuple[bytes, str]:
    """A gzip'd tar of `files` and its DiffID, byte-for-byte reproducible (fixed times, gzip mtime 0)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1_600_000_000, 0o644
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0), sha256(raw.getvalue())


def _descriptor(media_type: str, data: bytes, **extra) -> dict:
    return {"mediaType": media_type, "digest": sha256(data), "size": len(data), **extra}


def platform_image(platform: str, base: tuple[bytes, str]) -> PlatformImage:
    """One platform's manifest, config and layers: the shared `base`, then a layer naming the platform."""
    os_, arch, *variant = platform.split("/")
    top = _tar_gz({"platform.txt": f"app for {platform}\n".encode()})
    config = json.dumps({
        "architecture": arch, "os": os_, **({"variant": variant[0]} if variant else {}),
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [base[1], top[1]]},
    }).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": _descriptor(OCI_CONFIG, config),
        "layers": [_descriptor(OCI_LAYER, base[0]), _descriptor(OCI_LAYER, top[0])],
    }).encode()
    return PlatformImage(platform, manifest, config, [base[0], top[0]])


def build_layout(path: Path, tag: str,
                 platforms: tuple[str, ...] = ("linux/amd64", "linux/arm64/v8")) -> Layout:
    """Write an OCI image layout at `path`: `index.json` -> an image index (tagged `tag`) -> one
    manifest per platform, each of the shared base layer and a top layer naming its platform."""
    base = _tar_gz({"etc/base.txt": b"shared base layer\n"})
    images = {p: platform_image(p, base) for p in platforms}
    entries = []
    for p, image in images.items():
        os_, arch, *variant = p.split("/")
        platform = {"architecture": arch, "os": os_, **({"variant": variant[0]} if variant else {})}
        entries.append(_descriptor(OCI_MANIFEST, image.manifest, platform=platform))
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    for data in [index] + [b for i in images.values() for b in (i.manifest, i.config, *i.layers)]:
        (blobs / sha256(data).removeprefix("sha256:")).write_bytes(data)
    (path / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    top = _descriptor(OCI_INDEX, index, annotations={"org.opencontainers.image.ref.name": tag})
    (path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [top]}))
    return Layout(path, tag, index, images)


# --- a token server that signs JWTs ---------------------------------------------------------------
def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class SigningKey:
    key: ec.EllipticCurvePrivateKey
    cert_der: bytes
    cert_pem: bytes

    @classmethod
    def generate(cls) -> SigningKey:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .sign(key, hashes.SHA256()))
        return cls(key, cert.public_bytes(serialization.Encoding.DER),
                   cert.public_bytes(serialization.Encoding.PEM))

    def jwt(self, claims: dict) -> str:
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(self.cert_der).decode()]}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


class _Server:
    """A ThreadingHTTPServer on a loopback address, served from a daemon thread until `stop`."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], host: str = "127.0.0.1"):
        self.httpd = ThreadingHTTPServer((host, 0), handler)
        self.httpd.owner = self
        self.host = f"{host}:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep the test output quiet
        pass

    def reply(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


class TokenServer(_Server):
    """GET /token?service=S&scope=repository:NAME:ACTIONS -> {"token": JWT}, like Docker Hub's auth.

    Known users (basic credentials) get the actions they ask for; a wrong password gets 401. An
    anonymous client gets `pull` only, and nothing at all (401) once `anonymous` is False."""

    def __init__(self, key: SigningKey, users: dict[str, str]):
        self.key, self.users, self.anonymous = key, users, True
        self.requests: list[dict] = []
        super().__init__(_TokenHandler)

    @property
    def realm(self) -> str:
        return f"http://{self.host}/token"

    def grant(self, authorization: str | None, query: dict[str, list[str]]) -> tuple[int, dict]:
        subject = ""
        if authorization:
            user, _, password = base64.b64decode(authorization.removeprefix("Basic ")).decode().partition(":")
            if self.users.get(user) != password:
                return 401, {"errors": [{"code": "UNAUTHORIZED", "message": "wrong user name or password"}]}
            subject = user
        elif not self.anonymous:
            return 401, {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}
        access = []
        for scope in query.get("scope", []):
            kind, rest = scope.split(":", 1)
            name, _, actions = rest.rpartition(":")
            wanted = actions.split(",")
            access.append({"type": kind, "name": name,
                           "actions": wanted if subject else [a for a in wanted if a == "pull"]})
        now = int(time.time())
        token = self.key.jwt({"iss": ISSUER, "sub": subject, "aud": query.get("service", [""])[0],
                              "exp": now + 300, "nbf": now - 10, "iat": now, "jti": secrets.token_hex(8),
                              "access": access})
        return 200, {"token": token, "access_token": token, "expires_in": 300}


class _TokenHandler(_Handler):
    def do_GET(self) -> None:
        server: TokenServer = self.server.owner
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        server.requests.append({"query": query, "authorization": self.headers.get("Authorization")})
        status, body = server.grant(self.headers.get("Authorization"), query)
        self.reply(status, json.dumps(body).encode(), {"Content-Type": "application/json"})


# --- Debian's docker-registry -----------------------------------------------------------------------
@dataclass
class Registry:
    """`docker-registry serve` on 127.0.0.1, token auth from `tokens`, storage under `workdir`."""

    workdir: Path
    tokens: TokenServer
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def storage(self) -> Path:
        return self.workdir / "storage"

    def blob_file(self, digest: str) -> Path:
        """Where the registry keeps a blob (manifests are blobs too): .../blobs/sha256/AB/ABCD.../data."""
        hexa = digest.removeprefix("sha256:")
        return self.storage / "docker/registry/v2/blobs/sha256" / hexa[:2] / hexa / "data"

    def start(self) -> None:
        binary = require("docker-registry", "docker-registry")
        bundle = self.workdir / "token-signer.pem"
        bundle.write_bytes(self.tokens.key.cert_pem)
        config = {
            "version": 0.1,
            "log": {"level": "error", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self.storage)}, "delete": {"enabled": True}},
            "http": {"addr": self.host},
            "auth": {"token": {"realm": self.tokens.realm, "service": SERVICE, "issuer": ISSUER,
                               "rootcertbundle": str(bundle)}},
        }
        path = self.workdir / "config.yml"
        path.write_text(json.dumps(config))  # YAML is a superset of JSON
        with open(self.workdir / "registry.log", "wb") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen([binary, "serve", str(path)], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"docker-registry exited: {(self.workdir / 'registry.log').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"docker-registry did not listen on {self.host} within 10 s")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def seed(registry: Registry, layout: Layout, repository: str) -> None:
    """`skopeo copy --all` the layout's index (every platform) into REGISTRY/REPOSITORY:TAG.

    skopeo runs in a mount namespace of its own with a tmpfs over /var/lib, so the blob-info cache it
    keeps as root in /var/lib/containers/cache dies with it (the tests leave nothing on the host)."""
    skopeo = require("skopeo", "skopeo")
    require("unshare", "util-linux")
    copy = [skopeo, "--insecure-policy", "copy", "--all", "--preserve-digests", "--dest-tls-verify=false",
            "--dest-creds", ":".join(PUSHER), f"oci:{layout.path}:{layout.tag}",
            f"docker://{registry.host}/{repository}:{layout.tag}"]
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                             'mount -t tmpfs tmpfs /var/lib && exec "$@"', "sh", *copy],
                            capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        pytest.fail(f"skopeo copy into {registry.host}/{repository} failed: {result.stderr.strip()}")


@contextmanager
def tampered(path: Path, old: bytes | None = None, new: bytes | None = None) -> Iterator[None]:
    """Change a file of the registry's storage in place, keeping its size (no cached length disagrees),
    and restore it afterwards: replace `old` by `new`, or else flip the last byte."""
    original = path.read_bytes()
    if old is None:
        changed = original[:-1] + bytes([original[-1] ^ 0xFF])
    else:
        assert len(old) == len(new) and old in original, f"{old!r} is not in {path}"
        changed = original.replace(old, new, 1)
    path.write_bytes(changed)
    try:
        yield
    finally:
        path.write_bytes(original)


# --- fakes: a registry that fails, a registry that redirects --------------------------------------
class BlobServer(_Server):
    """Serves blobs by digest at /blobs/DIGEST and records each request's headers."""

    def __init__(self, blobs: dict[str, bytes], host: str = "127.0.0.2"):
        self.blobs = blobs
        self.requests: list[dict[str, str]] = []
        super().__init__(_BlobHandler, host)


class _BlobHandler(_Handler):
    def do_GET(self) -> None:
        server: BlobServer = self.server.owner
        server.requests.append({"path": self.path, **dict(self.headers)})
        digest = urllib.parse.urlsplit(self.path).path.removeprefix("/blobs/")
        data = server.blobs.get(digest)
        if data is None:
            return self.reply(404)
        self.reply(200, data)


class FakeRegistry(_Server):
    """A registry API on 127.0.0.1 that answers every request with `status` when it is set; else it
    demands a bearer token (from `tokens`) or, with `basic`, that user and password (as a registry with
    htpasswd auth does), serves `manifests` by tag or digest, and redirects blob GETs to `blob_server`
    (307, the way registries on S3 or a CDN answer)."""

    def __init__(self, tokens: TokenServer | None = None,
                 manifests: dict[str, tuple[str, bytes]] | None = None,
                 blob_server: BlobServer | None = None, status: int | None = None,
                 basic: tuple[str, str] | None = None):
        self.tokens, self.manifests, self.blob_server = tokens, manifests or {}, blob_server
        self.status = status
        self.basic = "Basic " + base64.b64encode(":".join(basic).encode()).decode() if basic else None
        self.requests: list[dict[str, str]] = []
        super().__init__(_FakeRegistryHandler)


class _FakeRegistryHandler(_Handler):
    def do_GET(self) -> None:
        server: FakeRegistry = self.server.owner
        server.requests.append({"path": self.path, **dict(self.headers)})
        if server.status:
            return self.reply(server.status, b'{"errors":[{"code":"UNKNOWN","message":"injected fault"}]}')
        authorization = self.headers.get("Authorization") or ""
        if server.basic and authorization != server.basic:
            return self.reply(401, b"", {"WWW-Authenticate": 'Basic realm="fake-registry"'})
        if not server.basic and not authorization.startswith("Bearer "):
            challenge = f'Bearer realm="{server.tokens.realm}",service="{SERVICE}"'
            return self.reply(401, b"", {"WWW-Authenticate": challenge})
        if "/manifests/" in self.path and self.path.rsplit("/", 1)[1] in server.manifests:
            media_type, data = server.manifests[self.path.rsplit("/", 1)[1]]
            return self.reply(200, data, {"Content-Type": media_type, "Docker-Content-Digest": sha256(data)})
        if "/blobs/" in self.path and server.blob_server:
            location = f"http://{server.blob_server.host}/blobs/{self.path.rsplit('/', 1)[1]}?signature=x"
            return self.reply(307, b"", {"Location": location})
        self.reply(404, b'{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known"}]}')
