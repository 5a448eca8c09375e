"""The package's import graph: no circles, no private names imported across modules."""

from __future__ import annotations

from pathlib import Path

from .import_graph import problems

SRC = Path(__file__).resolve().parents[1] / "src"


def test_no_import_circles_or_private_imports_in_the_package():
    assert problems(SRC) == []


def test_the_check_finds_a_circle_and_a_private_import(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from pkg.b import g\n")
    (pkg / "b.py").write_text("from pkg.a import f\nfrom pkg.c import _hidden\n")
    (pkg / "c.py").write_text("_hidden = 1\n")
    found = problems(tmp_path)
    assert "pkg.a -> pkg.b -> pkg.a" in found
    assert "pkg.b imports pkg.c._hidden" in found
    assert len(found) == 2
