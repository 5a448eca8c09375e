"""The README's examples, checked: a README snippet that breaks breaks the tests.

Every ``exotune`` command in a bash block parses with the CLI as it is (flags, choices, values);
every ``exotune serve`` command runs its settings checks for real (the model: a tiny one, and
no server started); every python block compiles. Full runs take minutes to hours, so what is
run is what can break without a long run: the interface the examples use."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from exotune import cli

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def commands() -> list[tuple[dict, list[str]]]:
    """(environment, argv) of every exotune command in the bash blocks."""
    found = []
    for block in blocks("bash"):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = line.split(" #")[0].strip().rstrip("&").strip()
            if not line or line.startswith("#"):
                continue
            for part in line.split("&&"):
                words = shlex.split(part)
                env = {}
                while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                    key, _, value = words.pop(0).partition("=")
                    env[key] = value
                if words[:1] == ["torchrun"] and "exotune.cli" in words:
                    words = ["exotune", *words[words.index("exotune.cli") + 1 :]]
                if words[:1] == ["exotune"]:
                    found.append((env, [w for w in words[1:] if w != "..."]))
    return found


COMMANDS = commands()


def test_the_readme_has_examples():
    assert len(COMMANDS) >= 20 and any(argv[0] == "serve" for _, argv in COMMANDS)


@pytest.mark.parametrize(("env", "argv"), COMMANDS, ids=[" ".join(a)[:60] for _, a in COMMANDS])
def test_every_readme_command_parses(env, argv):
    cli.build_parser(argv[0]).parse_args(argv)


@pytest.mark.parametrize(
    ("env", "argv"),
    [c for c in COMMANDS if c[1][0] == "serve"],
    ids=lambda v: " ".join(v)[:60] if isinstance(v, list) else "",
)
def test_every_readme_serve_command_passes_its_checks(env, argv, tiny_box, tmp_path, monkeypatch):
    import exotune.boxes
    from exotune.cli import serve

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # the owner secret is written there
    (tmp_path / "tokens.txt").write_text("token-from-file-1\n")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(exotune.boxes, "load_box", lambda *a, **k: tiny_box)
    monkeypatch.setattr(serve, "run_server", lambda app, host, port, *rest: None)
    assert cli.main(argv) == 0


@pytest.mark.parametrize("source", blocks("python"), ids=lambda s: s.strip().splitlines()[0][:50])
def test_every_readme_python_block_compiles(source):
    compile(source, "README.md", "exec")
