"""Registry commands: pull, login, logout.

    minictl pull [--platform OS/ARCH[/VARIANT]] [--insecure] REF
    minictl login [-u USER] [--password-stdin | -p PASSWORD] [--insecure] [REGISTRY]
    minictl logout [REGISTRY]

Registries on loopback are spoken to in plain HTTP; `--insecure` (or $MINI_CONTAINER_INSECURE_REGISTRIES,
comma-separated HOST[:PORT]) does the same for another host. Credentials go to ROOT/auth.json (mode 0600).
The handlers import the registry client themselves (http.client, ssl): other commands do not need it.
"""

from __future__ import annotations

import getpass
import sys

from ..errors import InvalidArgumentError
from ..image.reference import DEFAULT_REGISTRY, parse
from ..image.store import ImageStore

_INSECURE_HELP = "speak plain HTTP to this registry even if it is not on loopback"


def register(commands) -> None:
    """Add the registry commands to minictl's subcommands."""
    pull_ = commands.add_parser("pull", help="pull an image from a registry")
    pull_.add_argument("image", help="e.g. busybox, 127.0.0.1:5000/team/app:v1, alpine@sha256:...")
    pull_.add_argument("--platform", help="OS/ARCH[/VARIANT] to pick from a multi-platform image "
                                          "(default: this host's)")
    pull_.add_argument("--insecure", action="store_true", help=_INSECURE_HELP)
    pull_.set_defaults(handler=_pull)

    login = commands.add_parser("login", help="check and store credentials for a registry")
    login.add_argument("registry", nargs="?", default=DEFAULT_REGISTRY,
                       help="HOST[:PORT] (default: %(default)s)")
    login.add_argument("-u", "--username")
    secret = login.add_mutually_exclusive_group()
    secret.add_argument("-p", "--password", help="the password (visible in `ps`: prefer --password-stdin)")
    secret.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    login.add_argument("--insecure", action="store_true", help=_INSECURE_HELP)
    login.set_defaults(handler=_login)

    logout = commands.add_parser("logout", help="forget the credentials stored for a registry")
    logout.add_argument("registry", nargs="?", default=DEFAULT_REGISTRY)
    logout.set_defaults(handler=_logout)


def _registry(text: str) -> str:
    """A registry name as references spell it (`index.docker.io` is `docker.io`)."""
    registry = parse(f"{text}/probe").registry
    if registry != text and text != "index.docker.io":
        raise InvalidArgumentError(f"invalid registry {text!r}: expected HOST[:PORT], e.g. 127.0.0.1:5000")
    return registry


def _pull(args) -> None:
    from ..image.pull import PullProgress, pull
    from ..image.registry import parse_platform
    from ..image.registry_auth import load_credentials

    reference = parse(args.image)
    platform = parse_platform(args.platform) if args.platform else None
    store = ImageStore(args.root)
    image = pull(reference, store, platform, credentials=load_credentials(args.root, reference.registry),
                 insecure=args.insecure, progress=PullProgress(sys.stderr))
    print(image.reference)


def _login(args) -> None:
    from ..image.registry import check_login
    from ..image.registry_auth import Credentials, store_credentials

    registry = _registry(args.registry)
    username = args.username or (input("Username: ") if sys.stdin.isatty() else None)
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = args.password or (getpass.getpass("Password: ") if sys.stdin.isatty() else None)
    if not username or not password:
        raise InvalidArgumentError("minictl login needs a user name and a password: "
                                   "-u USER --password-stdin (or run it on a terminal to be asked)")
    credentials = Credentials(username, password)
    check_login(registry, credentials, args.insecure)
    store_credentials(args.root, registry, credentials)
    print(f"Login Succeeded ({registry}, credentials kept in {args.root}/auth.json)")


def _logout(args) -> None:
    from ..image.registry_auth import remove_credentials

    registry = _registry(args.registry)
    if remove_credentials(args.root, registry):
        print(f"Removed the credentials for {registry}")
    else:
        print(f"Not logged in to {registry}")
