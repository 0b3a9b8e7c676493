"""syscalls.py's cffi declarations, parsed once (out-of-line ABI mode) rather than in every process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers import REPO

from mini_container import syscalls


def test_importing_the_engine_does_not_parse_c():
    """The declarations are loaded from the module cffi wrote once: pycparser is not even imported."""
    code = ("import sys, mini_container.syscalls as s; "
            "print('pycparser' in sys.modules, s.ffi.sizeof('cap_user_data'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                            timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert (result.returncode, result.stdout) == (0, "False 12\n"), result.stderr
    kept = Path(syscalls.__file__).parent.glob("__pycache__/_libc_ffi_*.py")
    assert any("sock_fprog" in module.read_text() for module in kept)


def test_where_the_module_cannot_be_written_the_declarations_are_parsed_in_line(monkeypatch):
    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(os, "makedirs", refused)
    ffi = syscalls._out_of_line_ffi("int getpid(void); /* a declaration no cache holds */")
    assert ffi.dlopen(None).getpid() == os.getpid()
