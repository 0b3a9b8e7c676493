"""Image references parse and normalise as Docker's do."""

import pytest

from mini_container.errors import InvalidArgumentError
from mini_container.image.reference import parse

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize("text, registry, repository, tag, digest, familiar", [
    ("busybox", "docker.io", "library/busybox", "latest", None, "busybox:latest"),
    ("busybox:1.36", "docker.io", "library/busybox", "1.36", None, "busybox:1.36"),
    (f"docker.io/library/alpine@{DIGEST}", "docker.io", "library/alpine", None, DIGEST, f"alpine@{DIGEST}"),
    ("127.0.0.1:5000/team/app:v1", "127.0.0.1:5000", "team/app", "v1", None, "127.0.0.1:5000/team/app:v1"),
    ("localhost/app", "localhost", "app", "latest", None, "localhost/app:latest"),
    ("team/app", "docker.io", "team/app", "latest", None, "team/app:latest"),
    ("index.docker.io/library/debian:12", "docker.io", "library/debian", "12", None, "debian:12"),
    (f"quay.io/a/b/c:t@{DIGEST}", "quay.io", "a/b/c", "t", DIGEST, f"quay.io/a/b/c:t@{DIGEST}"),
    ("my-registry.example:443/x__y.z-w", "my-registry.example:443", "x__y.z-w", "latest", None,
     "my-registry.example:443/x__y.z-w:latest"),
])
def test_parse(text, registry, repository, tag, digest, familiar):
    ref = parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest, ref.familiar) == (
        registry, repository, tag, digest, familiar)


def test_docker_hub_api_host():
    assert parse("busybox").api_host == "registry-1.docker.io"
    assert parse("127.0.0.1:5000/app").api_host == "127.0.0.1:5000"
    assert str(parse("busybox")) == "docker.io/library/busybox:latest"


@pytest.mark.parametrize("text", ["", "Busybox", "Team/app", "busybox:", "busybox:-x", "a//b", "/a", "a/",
                                  "busybox@sha256:abc", "busy box", "busybox:" + "t" * 129, "a" * 256,
                                  "x@sha256:" + "AB" * 32])
def test_refuse(text):
    with pytest.raises(InvalidArgumentError, match="invalid image reference"):
        parse(text)
