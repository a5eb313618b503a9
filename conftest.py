"""Shared by the tests and the doctests: every temporary file a test makes lands in its own
``tmp_path``, so pytest removes it with the rest (nothing accumulates under the system temp folder).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _temporary_files_under_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # tempfile.mkdtemp() in a docstring example and TMPDIR for the scripts a test starts
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
