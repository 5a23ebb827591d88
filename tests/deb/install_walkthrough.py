"""The documented install, step by step as a new admin does it, in a fresh booted copy of this machine, with
each step's wall time: ``python -m tests.deb.install_walkthrough`` (as root, from a checkout; builds the
package with `make deb` first if build/ has none). Prints the table that docs/install.md quotes.

The steps are test_system_postfix.py's (the lines parsed out of docs/install.md and docs/operating.md), so
the walkthrough, the test and the docs are the same sequence; what stays manual is listed in docs/install.md
("How long it takes")."""

from __future__ import annotations

import shutil
import time

from tests.deb.booted import BootedCopy
from tests.deb.test_package import DEB, build_package
from tests.deb.test_system_postfix import Timings, install_as_documented
from tests.e2e.harness import make_workdir


def main() -> None:
    timings = Timings()
    started = time.monotonic()
    deb = DEB if DEB.exists() else build_package()
    workdir = make_workdir("amzguard-walkthrough-")
    copy = BootedCopy(workdir, binds={"/mnt/debs": deb.parent})
    try:
        timings.step("boot the container (not an admin step)", copy.start)
        install_as_documented(copy, deb, timings)
        state = copy.run(["systemctl", "is-active", "amzguard", "postfix@-"], check=False).stdout.split()
        print(timings.table())
        print(f"\nservices: amzguard {state[0]}, postfix@- {state[1]}; total {time.monotonic() - started:.1f} s")
    finally:
        copy.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
