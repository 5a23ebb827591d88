"""Static guarantees about the product code: no shell, no eval, safe YAML, no world-writable socket."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[2] / "milter" / "amzguard"
FILES = sorted(SOURCE.glob("*.py"))


# check-postfix must ask Postfix's own tools (postconf, postmap): this one function starts them, from a
# fixed list, argv only (see test_probe_runs_only_its_tools).
SUBPROCESS_ALLOWED = {"postfix_probe.py": "_run"}


def calls(path: Path) -> list[str]:
    """Dotted names of every call in a module (``os.system``, ``eval``, ``yaml.load`` ...), except the
    subprocess call of the one function SUBPROCESS_ALLOWED names for that module."""
    tree = ast.parse(path.read_text(), str(path))
    allowed = SUBPROCESS_ALLOWED.get(path.name)
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == allowed:
            skipped |= {id(n) for n in ast.walk(node) if isinstance(n, ast.Call) and ast.unparse(n.func) == "subprocess.run"}
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            parts = []
            while isinstance(func, ast.Attribute):
                parts.append(func.attr)
                func = func.value
            if isinstance(func, ast.Name):
                parts.append(func.id)
            if id(node) not in skipped:  # its keywords are still checked: never shell=True
                names.append(".".join(reversed(parts)))
            for keyword in node.keywords:
                if keyword.arg == "shell" and not (isinstance(keyword.value, ast.Constant) and not keyword.value.value):
                    names.append("shell=True")
    return names


def test_there_is_source_to_check() -> None:
    assert len(FILES) >= 8


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_no_shell_eval_or_unsafe_yaml(path: Path) -> None:
    forbidden = {"eval", "exec", "compile", "os.system", "os.popen", "shell=True", "yaml.load", "pickle.loads",
                 "yaml.unsafe_load", "subprocess.Popen", "subprocess.run", "subprocess.call"}  # fmt: skip
    assert not forbidden & set(calls(path))


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_no_bare_except(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    assert not [n.lineno for n in ast.walk(tree) if isinstance(n, ast.ExceptHandler) and n.type is None]


def test_checker_itself_sees_forbidden_calls(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import os, subprocess\nos.system('x')\neval('1')\nsubprocess.run('x', shell=True)\n")
    assert {"os.system", "eval", "shell=True", "subprocess.run"} <= set(calls(sample))


def test_probe_runs_only_its_tools() -> None:
    from amzguard import postfix_probe

    assert "subprocess.run" not in calls(SOURCE / "postfix_probe.py")  # only inside _run
    assert set(postfix_probe._TOOLS) == {"postconf", "postmap"}
    with pytest.raises(ValueError, match="runs only"):
        postfix_probe._run("sh", ["-c", "true"])
