"""The README is the front door and docs/ holds the reference: keep them short and whole.

Three promises, each checked here:

* the README stays at most 15,000 bytes (the reference lives in ``docs/``);
* every relative link of ``README.md`` and ``docs/*.md`` (pictures included) points to a
  file of the repository, and every ``#anchor`` to a heading of its page, slugged the way
  GitHub slugs them;
* the README's configuration table names every ``ORDERBOOK_*`` setting the service
  accepts (``service.settings.SETTINGS_HELP``), and no setting it does not accept.

Pure file reading: no sockets, well under a second.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.settings import SETTINGS_HELP

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
README_MAX_BYTES = 15_000
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]

_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", re.M)
_SETTING = re.compile(r"\bORDERBOOK_[A-Z0-9_]+\b")


def _prose(markdown: str) -> str:
    """The text outside fenced code blocks (a ``# comment`` in a sh block is no heading)."""
    return _FENCE.sub("", markdown)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Every anchor of a page: its headings' slugs, repeated ones numbered as GitHub does."""
    seen: dict[str, int] = {}
    found = set()
    for match in _HEADING.finditer(_prose(markdown)):
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(markdown: str) -> list[str]:
    """Targets of the Markdown links and pictures of a page, outside code."""
    return _LINK.findall(_INLINE_CODE.sub("", _prose(markdown)))


def broken_links(page: Path, root: Path = REPO) -> list[str]:
    """Each relative link of ``page`` whose file or heading does not exist, with why."""
    broken = []
    for target in links(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest}")
            continue
        if not dest.is_relative_to(root):
            broken.append(f"{target}: outside the repository")
            continue
        if anchor:
            if dest.suffix != ".md":
                broken.append(f"{target}: an anchor into a file that is not Markdown")
            elif anchor not in anchors(dest.read_text(encoding="utf-8")):
                broken.append(f"{target}: no heading #{anchor} in {dest.name}")
    return broken


def configuration_table(readme: str) -> str:
    """The rows of the table under the README's ``## Configuration`` heading."""
    section = re.search(r"^## Configuration\n(.*?)(?=^## |\Z)", readme, re.M | re.S)
    assert section, "README.md has no '## Configuration' section"
    rows = [line for line in section.group(1).splitlines() if line.startswith("|")]
    assert rows, "the README's Configuration section has no table"
    return "\n".join(rows)


def test_readme_is_a_front_door_not_the_reference():
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, (
        f"README.md is {size:,} bytes, over {README_MAX_BYTES:,}: move reference text "
        "to a page of docs/ and link it"
    )


def test_every_docs_page_is_linked_from_the_readme():
    linked = {
        (REPO / target.partition("#")[0]).resolve()
        for target in links(README.read_text(encoding="utf-8"))
    }
    unlinked = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_and_anchors_resolve(page):
    assert not broken_links(page)


def test_the_pages_link_and_picture_what_they_promise():
    """A pattern that found no link would pass every page: count what it finds."""
    every = [t for page in PAGES for t in links(page.read_text(encoding="utf-8"))]
    assert len(every) > 50
    assert sum("#" in t for t in every) > 10
    pictures = {"docs/live.png", "docs/dashboard.png", "docs/plot-ETH-USD.png"}
    shown = {
        (page.parent / t).resolve().relative_to(REPO).as_posix()
        for page in PAGES
        for t in links(page.read_text(encoding="utf-8"))
        if t.endswith(".png")
    }
    assert pictures <= shown


def test_the_link_checker_finds_a_broken_file_and_a_broken_anchor(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (tmp_path / "elsewhere.md").write_text("# Elsewhere\n")
    (repo / "other.md").write_text("# Other page\n\n## Running `-w N` workers, fast!\n")
    page = repo / "page.md"
    page.write_text(
        "# Title\n\n## Same\n\n## Same\n\n"
        "[ok](other.md#running--w-n-workers-fast) [ok](#same-1) [ok](#title) "
        "[web](https://example.com/x#nowhere)\n"
        "[bad file](missing.md) [bad anchor](other.md#nothing) [bad here](#same-2)\n"
        "[outside](../elsewhere.md)\n"
        "```sh\n# not a heading\n[not a link](nowhere.md)\n```\n"
        "`[not a link either](nowhere.md)`\n"
    )
    assert [b.split(":")[0] for b in broken_links(page, root=repo)] == [
        "missing.md",
        "other.md#nothing",
        "#same-2",
        "../elsewhere.md",
    ]
    assert "not-a-heading" not in anchors(page.read_text())


def test_the_configuration_table_names_every_setting_and_no_other():
    table = configuration_table(README.read_text(encoding="utf-8"))
    named = set(_SETTING.findall(table))
    settings = {name for name in SETTINGS_HELP if name.startswith("ORDERBOOK_")}
    assert len(settings) >= 10
    assert settings - named == set(), "settings missing from the README's table"
    assert named - settings == set(), (
        "the README's table names settings that do not exist"
    )
