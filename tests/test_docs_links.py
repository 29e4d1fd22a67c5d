"""Every relative link in the README and docs/ resolves: the file exists and an #anchor names a heading."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE = re.compile(r"`[^`\n]*`")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (hyphens and underscores kept), spaces → -."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out = set()
    for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M):
        s = slug(m.group(1))
        n = seen.get(s, 0)
        out.add(s if n == 0 else f"{s}-{n}")
        seen[s] = n + 1
    return out


def links(page: Path) -> list[str]:
    text = CODE.sub("", FENCE.sub("", page.read_text(encoding="utf-8")))
    return [m.group(1) for m in LINK.finditer(text)]


def test_the_docs_pages_exist() -> None:
    names = {p.name for p in PAGES}
    assert {"icecube.md", "nova.md", "km3net.md", "cluster.md", "bad-input.md", "development.md"} <= names


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.name}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = broken_links(page)
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_link_checker_catches_a_broken_link(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other\n", encoding="utf-8")
    page.write_text("# A title\n\n## Some `code`: here\n\n[ok](#some-code-here) [bad](#nope) [gone](missing.md)\n"
                    "[there](other.md#other) [not there](other.md#a-title) ![img](page.md)\n"
                    "```\n[in code](nowhere.md)\n```\n", encoding="utf-8")
    assert anchors(page) == {"a-title", "some-code-here"}
    assert broken_links(page) == ["#nope: no heading #nope in page.md", "missing.md: no such file",
                                  "other.md#a-title: no heading #a-title in other.md"]


def readme_commands() -> list[list[str]]:
    """The ``neutrino-ray ...`` command lines of the README's code blocks, as argv lists."""
    import shlex

    out = []
    for block in FENCE.findall((ROOT / "README.md").read_text(encoding="utf-8")):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split(" # ")[0].strip()
            if line.startswith("neutrino-ray "):
                out.append(shlex.split(line)[1:])
    return out


def test_the_readme_commands_parse() -> None:
    """Each command the front door shows is one the CLI accepts (parsed only: nothing runs)."""
    from neutrino_ray.cli import build_parser

    commands = readme_commands()
    assert len(commands) >= 9  # the three commands of each detector
    for argv in commands:
        try:
            build_parser().parse_args(argv)
        except SystemExit as e:
            raise AssertionError(f"README command does not parse: neutrino-ray {' '.join(argv)}") from e
