"""Which modules an app's source bundle carries (burst._bundle.local_modules)."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from burst import _bundle


def module(name: str, file: object) -> types.ModuleType:
    m = types.ModuleType(name)
    m.__file__ = file  # type: ignore[assignment]
    return m


def test_a_made_up_relative_file_is_not_bundled(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """torch's ``torch.classes`` module says its file is "_classes.py": run from the app's
    folder, that resolved to a file of the app that does not exist, and the deploy failed."""
    (tmp_path / "app.py").write_text("x = 1\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "mod.py").write_text("")
    monkeypatch.chdir(tmp_path)
    mods = {"app": module("app", str(tmp_path / "app.py")),
            "pkg.mod": module("pkg.mod", str(tmp_path / "pkg" / "mod.py")),
            "torch.classes": module("torch.classes", "_classes.py"),
            "gone": module("gone", str(tmp_path / "gone.py")),
            "odd": module("odd", None)}
    files = _bundle.local_modules(tmp_path, mods)
    assert files == sorted([tmp_path / "app.py", tmp_path / "pkg" / "__init__.py",
                            tmp_path / "pkg" / "mod.py"])
