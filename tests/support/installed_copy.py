"""amzguard installed for an unprivileged user: the pipe transport runs it as ``nobody``, who cannot reach a
checkout under /root (mode 0700) or the test venv there (``/usr/bin/python3: No module named amzguard``)."""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"
"""The interpreter of the Debian package's /usr/bin/amzguard: Debian's Python with python3-yaml and friends."""


def install_world_readable(dest: Path) -> Path:
    """Copy this checkout's package to ``dest/lib`` and write ``dest/bin/amzguard``, the same two-line entry
    point pip and the Debian package install, run by :data:`SYSTEM_PYTHON`. Every file is world-readable,
    so any user runs exactly the code under test; ``dest`` itself must be reachable (make_workdir's are).
    Returns the command's path."""
    lib, bin_dir = dest / "lib", dest / "bin"
    shutil.copytree(REPO / "milter" / "amzguard", lib / "amzguard", ignore=shutil.ignore_patterns("__pycache__"))
    bin_dir.mkdir()
    command = bin_dir / "amzguard"
    command.write_text(
        f"#!{SYSTEM_PYTHON}\nimport sys\nsys.path.insert(0, {str(lib)!r})\n"
        "from amzguard.cli import main\nsys.exit(main())\n"
    )
    for path in [dest, *dest.rglob("*")]:
        path.chmod(0o755 if path.is_dir() or path == command else 0o644)
    return command
