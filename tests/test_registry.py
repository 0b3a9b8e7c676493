"""Pulling from a registry: Debian's docker-registry on loopback with JWT token auth, seeded by skopeo.

The registry holds `team/app:v1`, an OCI index over linux/amd64 and linux/arm64/v8 (a shared base
layer, and a top layer whose platform.txt names the platform). Faults are injected by tampering with
the registry's storage (same size, restored after), by the token server refusing anonymous clients, and
by small fake servers: one answering 500, one redirecting blob GETs to a blob server on 127.0.0.2.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import stat
import tempfile
from pathlib import Path

import pytest
from helpers import minictl
from registry_fixture import (
    OCI_MANIFEST,
    PUSHER,
    READER,
    BlobServer,
    FakeRegistry,
    Layout,
    Registry,
    SigningKey,
    TokenServer,
    build_layout,
    free_port,
    seed,
    sha256,
    tampered,
)

from mini_container.errors import ImageNotFoundError, InvalidArgumentError
from mini_container.image.oci import DigestMismatchError, Platform
from mini_container.image.pull import PullProgress, pull
from mini_container.image.reference import parse
from mini_container.image.registry import (
    RegistryClient,
    host_platform,
    parse_platform,
    plain_http,
    platform_matches,
)
from mini_container.image.registry_auth import Credentials, RegistryError, parse_challenge
from mini_container.image.store import ImageStore

HOST_PLATFORM = str(host_platform())


@pytest.fixture(scope="module")
def workdir():
    path = Path(tempfile.mkdtemp(prefix="mini-container-registry-"))
    yield path
    shutil.rmtree(path)


@pytest.fixture(scope="module")
def tokens():
    server = TokenServer(SigningKey.generate(), dict([PUSHER, READER]))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def registry(workdir, tokens):
    server = Registry(workdir, tokens)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def layout(workdir, registry) -> Layout:
    layout = build_layout(workdir / "layout", "v1")
    seed(registry, layout, "team/app")
    return layout


@pytest.fixture
def store():
    root = Path(tempfile.mkdtemp(prefix="mini-container-pull-"))
    yield ImageStore(root)
    shutil.rmtree(root)


@pytest.fixture
def private(tokens):
    """The token server refuses anonymous clients for the test's duration."""
    tokens.anonymous = False
    yield
    tokens.anonymous = True


def ref(registry: Registry, rest: str = "team/app:v1"):
    return parse(f"{registry.host}/{rest}")


def assert_no_image(store: ImageStore, reference) -> None:
    with pytest.raises(ImageNotFoundError):
        store.get(str(reference))
    assert store.list() == []


def one_line_error(result) -> str:
    """A failed minictl run's stderr, which must be one `minictl: ...` line (progress lines before it)."""
    assert result.returncode != 0, result
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("minictl: ") and "Traceback" not in result.stderr, result.stderr
    return last


# --- the pure parts ---------------------------------------------------------------------------------
def test_challenge_keeps_commas_inside_quotes():
    scope = "repository:t/a:pull,push"
    challenge = parse_challenge(f'Bearer realm="http://a/token",service="reg",scope="{scope}"')
    assert challenge.scheme == "bearer"
    assert challenge.params == {"realm": "http://a/token", "service": "reg", "scope": scope}


def test_platform_matching():
    assert parse_platform("linux/arm64") == Platform("linux", "arm64", "v8")
    assert parse_platform("linux/aarch64") == Platform("linux", "arm64", "v8")
    assert platform_matches(parse_platform("linux/arm64"), Platform("linux", "arm64"))
    assert platform_matches(parse_platform("linux/amd64"), Platform("linux", "amd64", "v3"))
    assert not platform_matches(parse_platform("linux/arm/v6"), Platform("linux", "arm"))
    assert not platform_matches(parse_platform("linux/amd64"), Platform("linux", "arm64"))
    assert HOST_PLATFORM in ("linux/amd64", "linux/arm64/v8")
    with pytest.raises(InvalidArgumentError, match="OS/ARCH"):
        parse_platform("amd64")


def test_plain_http_only_on_loopback(monkeypatch):
    assert plain_http("127.0.0.1:5000") and plain_http("127.9.9.9") and plain_http("localhost:5000")
    assert plain_http("[::1]:5000")
    assert not plain_http("registry.example:5000") and not plain_http("10.0.0.1:5000")
    assert plain_http("10.0.0.1:5000", insecure=True)
    monkeypatch.setenv("MINI_CONTAINER_INSECURE_REGISTRIES", "a.example, 10.0.0.1:5000")
    assert plain_http("10.0.0.1:5000") and not plain_http("10.0.0.1:5001")


# --- pulling from the real registry -----------------------------------------------------------------
@pytest.mark.parametrize("platform", ["linux/amd64", "linux/arm64"])
def test_pull_selects_the_platform(registry, layout, store, platform):
    expected = layout.images[str(parse_platform(platform))]
    image = pull(ref(registry), store, parse_platform(platform))
    assert image.digest == expected.digest
    assert store.get(str(ref(registry))).digest == expected.digest
    assert (image.layers[-1] / "platform.txt").read_text() == f"app for {parse_platform(platform)}\n"
    assert (image.layers[0] / "etc/base.txt").read_text() == "shared base layer\n"
    for digest in [expected.digest, *expected.layer_digests]:
        assert store.has_blob(digest)


def test_pull_defaults_to_the_host_platform(registry, layout, store):
    image = pull(ref(registry), store)
    assert image.digest == layout.images[HOST_PLATFORM].digest


def test_pull_by_digest(registry, layout, store):
    by_index = pull(ref(registry, f"team/app@{layout.index_digest}"), store, parse_platform("linux/arm64"))
    assert by_index.digest == layout.images["linux/arm64/v8"].digest
    assert store.get(f"{registry.host}/team/app@{layout.index_digest}").digest == by_index.digest
    amd64 = layout.images["linux/amd64"].digest
    by_manifest = pull(ref(registry, f"team/app@{amd64}"), store, parse_platform("linux/amd64"))
    assert by_manifest.digest == amd64


def test_pull_refuses_a_single_platform_image_of_another_platform(registry, layout, store):
    reference = ref(registry, f"team/app@{layout.images['linux/amd64'].digest}")
    with pytest.raises(RegistryError, match="built for linux/amd64, not linux/arm64/v8"):
        pull(reference, store, parse_platform("linux/arm64"))
    assert_no_image(store, reference)


def test_unknown_platform_lists_what_there_is(registry, layout, store):
    offered = r"no image for linux/s390x \(it has: linux/amd64, linux/arm64/v8\)"
    with pytest.raises(RegistryError, match=offered):
        pull(ref(registry), store, parse_platform("linux/s390x"))


def test_pull_skips_blobs_the_store_has(registry, layout, store):
    pull(ref(registry), store, parse_platform("linux/amd64"))
    base = layout.images["linux/arm64/v8"].layer_digests[0]
    output = io.StringIO()
    # A corrupted base layer in the registry does not matter: it is not fetched again.
    with tampered(registry.blob_file(base)):
        pull(ref(registry), store, parse_platform("linux/arm64"), progress=PullProgress(output))
    lines = output.getvalue().splitlines()
    top = layout.images["linux/arm64/v8"].layer_digests[1]
    assert f"{base[7:19]}: Already exists" in lines
    assert f"{top[7:19]}: Downloading 130B" in lines and f"{top[7:19]}: Download complete" in lines
    assert lines[-1] == f"Status: Downloaded newer image for {ref(registry).familiar}"


def test_progress_bar_on_a_terminal(registry, layout, store):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    output = Terminal()
    pull(ref(registry), store, parse_platform("linux/amd64"), progress=PullProgress(output))
    top = layout.images["linux/amd64"].layer_digests[1][7:19]
    assert f"\r{top}: Downloading [" in output.getvalue()
    assert f"\r{top}: Download complete\x1b[K\n" in output.getvalue()


def test_corrupted_blob_is_refused(registry, layout, store):
    top = layout.images["linux/amd64"].layer_digests[1]
    with tampered(registry.blob_file(top)), pytest.raises(DigestMismatchError, match=f"blob {top}.*refused"):
        pull(ref(registry), store, parse_platform("linux/amd64"))
    assert_no_image(store, ref(registry))
    assert not store.has_blob(top)


def test_wrong_manifest_digest_is_refused(registry, layout, store):
    image = layout.images["linux/amd64"]
    # Still a valid manifest, of the same size, but pointing at another layer: the index entry's digest
    # no longer matches, and the pull stops before it fetches anything the manifest names.
    last_hex = image.layer_digests[1][-1]
    other = "0" if last_hex != "0" else "1"
    with tampered(registry.blob_file(image.digest), image.layer_digests[1].encode(),
                  (image.layer_digests[1][:-1] + other).encode()):
        with pytest.raises(DigestMismatchError, match=f"expected {image.digest}.*refused"):
            pull(ref(registry), store, parse_platform("linux/amd64"))
    assert not store.has_blob(image.digest) and not store.has_blob(image.layer_digests[0])
    # An index whose platforms were swapped (amd64 would get the arm64 image), pulled by the digest it
    # had, or by tag (the registry's Docker-Content-Digest header still names the original): refused.
    with tampered(registry.blob_file(layout.index_digest), b'"amd64"', b'"arm64"'):
        for name in [f"team/app@{layout.index_digest}", "team/app:v1"]:
            with pytest.raises(DigestMismatchError, match=f"expected {layout.index_digest}"):
                pull(ref(registry, name), store, parse_platform("linux/amd64"))
    assert_no_image(store, ref(registry))


def test_client_fetches_blobs_verified(registry, layout):
    client = RegistryClient(ref(registry))
    resolved = client.resolve(parse_platform("linux/arm64"))
    assert resolved.index_digest == layout.index_digest
    assert resolved.digest == layout.images["linux/arm64/v8"].digest
    manifest = resolved.manifest
    assert b"".join(client.fetch_blob(manifest.config)) == layout.images["linux/arm64/v8"].config
    assert b"".join(client.fetch_blob(manifest.layers[1])) == layout.images["linux/arm64/v8"].layers[1]


# --- the command line: auth, login, failures ---------------------------------------------------------
def test_private_registry_needs_login(registry, layout, store, tokens, private):
    reference = f"{registry.host}/team/app:v1"
    error = one_line_error(minictl(store.root, "pull", reference))
    assert "asks for credentials" in error and f"minictl login {registry.host}" in error
    assert_no_image(store, parse(reference))

    wrong = minictl(store.root, "login", "-u", READER[0], "--password-stdin", registry.host, input="nope\n")
    assert "refused user 'reader'" in one_line_error(wrong)
    assert not (store.root / "auth.json").exists()

    login = minictl(store.root, "login", "-u", READER[0], "--password-stdin", registry.host,
                    input=READER[1] + "\n")
    assert login.returncode == 0, login.stderr
    auth = store.root / "auth.json"
    assert stat.S_IMODE(auth.stat().st_mode) == 0o600
    stored = json.loads(auth.read_text())["auths"][registry.host]["auth"]
    assert base64.b64decode(stored).decode() == ":".join(READER)
    assert tokens.requests[-1]["authorization"] == Credentials(*READER).basic()

    pulled = minictl(store.root, "pull", "--platform", "linux/arm64", reference)
    assert pulled.returncode == 0, pulled.stderr
    assert store.get(reference).digest == layout.images["linux/arm64/v8"].digest
    assert tokens.requests[-1]["authorization"] == Credentials(*READER).basic()

    assert minictl(store.root, "logout", registry.host).returncode == 0
    assert json.loads(auth.read_text())["auths"] == {}


@pytest.mark.parametrize("name", ["team/nope:v1", "team/app:nope"])
def test_unknown_repository_or_tag(registry, layout, store, name):
    error = one_line_error(minictl(store.root, "pull", f"{registry.host}/{name}"))
    assert "not found" in error and "404" in error and "MANIFEST_UNKNOWN" in error
    assert_no_image(store, ref(registry, name))


def test_reference_that_does_not_parse(store):
    assert "invalid image reference" in one_line_error(minictl(store.root, "pull", "Team/App:v1"))
    assert "invalid platform" in one_line_error(minictl(store.root, "pull", "--platform", "x", "busybox"))


def test_registry_answering_500(store):
    fake = FakeRegistry(status=500)
    try:
        error = one_line_error(minictl(store.root, "pull", f"{fake.host}/team/app:v1"))
    finally:
        fake.stop()
    assert "answered 500" in error and "injected fault" in error
    assert_no_image(store, parse(f"{fake.host}/team/app:v1"))


def test_registry_with_basic_auth(layout):
    image = layout.images["linux/amd64"]
    fake = FakeRegistry(manifests={"v1": (OCI_MANIFEST, image.manifest)}, basic=READER)
    reference = parse(f"{fake.host}/team/app:v1")
    try:
        with pytest.raises(RegistryError, match=f"asks for a user name and password: run 'minictl login "
                                                f"{fake.host}'"):
            RegistryClient(reference).resolve()
        with pytest.raises(RegistryError, match="denied to user 'reader' by .* \\(401"):
            RegistryClient(reference, Credentials(READER[0], "wrong")).resolve()
        assert RegistryClient(reference, Credentials(*READER)).resolve().digest == image.digest
    finally:
        fake.stop()


def test_unreachable_registry():
    port = free_port()  # nothing listens there
    with pytest.raises(RegistryError, match=f"cannot reach http://127.0.0.1:{port}: .*Connection refused"):
        RegistryClient(parse(f"127.0.0.1:{port}/team/app:v1")).resolve()


# --- redirects ------------------------------------------------------------------------------------------
def test_redirect_to_another_host_drops_the_authorization(layout, tokens, store):
    image = layout.images["linux/amd64"]
    blobs = BlobServer({sha256(blob): blob for blob in (image.config, *image.layers)})
    fake = FakeRegistry(tokens, {"v1": (OCI_MANIFEST, image.manifest)}, blobs)
    try:
        pulled = pull(parse(f"{fake.host}/team/app:v1"), store)
    finally:
        fake.stop()
        blobs.stop()
    assert pulled.digest == image.digest
    assert (pulled.layers[-1] / "platform.txt").read_text() == "app for linux/amd64\n"
    asked = [r for r in fake.requests if "/blobs/" in r["path"]]
    assert len(asked) == 3 and all(r["Authorization"].startswith("Bearer ") for r in asked)
    assert len(blobs.requests) == 3 and not any("Authorization" in r for r in blobs.requests)
