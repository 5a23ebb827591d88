"""The docs by audience: a short README, the pages it promises, links that lead somewhere, and no facts cited
from outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = ["README.md", "CONTRIBUTING.md", "bench/README.md", "docs/operating.md", "docs/design.md",
         "docs/configuration.md", "docs/postfix-behaviour.md", "docs/amazon-facts.md"]  # fmt: skip
# Pages other parts of the work write; linking to them before they land is fine.
WRITTEN_ELSEWHERE = {"docs/install.md", "docs/recipients.md", "docs/check-postfix.md", "docs/sendmail.md",
                     "docs/content-rules.md", "docs/testing-oracle.md", "docs/demo.md"}  # fmt: skip
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_readme_is_short() -> None:
    assert (REPO / "README.md").stat().st_size <= 12 * 1024


@pytest.mark.parametrize("page", PAGES)
def test_page_exists_and_its_links_resolve(page: str) -> None:
    path = REPO / page
    assert path.is_file()
    for target in LINK.findall(path.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        resolved = (path.parent / target).resolve()
        relative = resolved.relative_to(REPO).as_posix()
        assert resolved.exists() or relative in WRITTEN_ELSEWHERE, f"{page}: link to {target} leads nowhere"


def test_readme_and_operating_link_every_page_by_audience() -> None:
    readme = (REPO / "README.md").read_text()
    operating = (REPO / "docs" / "operating.md").read_text()
    for page in WRITTEN_ELSEWHERE | {"docs/operating.md", "docs/design.md", "bench/README.md", "CONTRIBUTING.md"}:
        assert f"]({page})" in readme, f"README.md does not link {page}"
    for page in WRITTEN_ELSEWHERE:
        assert f"]({Path(page).name})" in operating, f"docs/operating.md does not link {page}"


def test_no_facts_cited_from_outside_the_repository() -> None:
    for path in [*REPO.glob("milter/**/*.py"), *REPO.glob("tests/**/*.py"), *REPO.glob("tests/**/*.md"),
                 *REPO.glob("bench/**/*"), *REPO.glob("docs/*.md"), REPO / "README.md"]:  # fmt: skip
        if path.is_file() and path != Path(__file__):
            text = path.read_text(errors="replace")
            assert "/work/shared" not in text and "../shared" not in text, path
