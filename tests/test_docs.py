"""The documentation's links hold: every relative link in README.md, HACKING.md and docs/*.md
names a file of this repository, and a ``#fragment`` names a heading of that file.

Links are read with markdown-it-py (the CommonMark parser), so links inside code spans and code
blocks are not links, and reference-style links count. Anchors follow GitHub's rule for
heading ids (lower case, punctuation other than ``-`` and ``_`` removed, spaces to ``-``, a
repeated heading gets ``-1``, ``-2``...). Every page under docs/ also starts, after its title,
with a line saying what ran where (which machine, what could not run).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from markdown_it import MarkdownIt
from markdown_it.token import Token

from tests.harness import ROOT

PAGES = sorted([ROOT / "README.md", ROOT / "HACKING.md", *(ROOT / "docs").glob("*.md")])
_md = MarkdownIt("commonmark", {"html": True})


def _walk(tokens: list[Token]) -> list[Token]:
    out: list[Token] = []
    for t in tokens:
        out.append(t)
        if t.children:
            out.extend(_walk(t.children))
    return out


def links(page: Path) -> list[str]:
    """Every link and image target of a Markdown page."""
    targets = []
    for t in _walk(_md.parse(page.read_text())):
        if t.type == "link_open":
            targets.append(str(t.attrs["href"]))
        elif t.type == "image":
            targets.append(str(t.attrs["src"]))
    return targets


def slug(heading: str) -> str:
    """GitHub's id for a heading's text (inline Markdown already rendered to plain text)."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


@cache
def anchors(page: Path) -> frozenset[str]:
    """The ids GitHub gives the headings of ``page``."""
    tokens = _md.parse(page.read_text())
    seen: dict[str, int] = {}
    out = set()
    for i, t in enumerate(tokens):
        if t.type == "heading_open":
            inline = tokens[i + 1]
            text = "".join(c.content for c in _walk(inline.children or [])
                           if c.type in ("text", "code_inline"))
            base = slug(text)
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return frozenset(out)


def test_slug_follows_githubs_rule() -> None:
    assert slug("GPU path (TensorRT)") == "gpu-path-tensorrt"
    assert slug("Encryption and access control: CURVE") == "encryption-and-access-control-curve"
    assert slug("Darknet -> ONNX") == "darknet---onnx"
    assert slug("What was tested, and what was not") == "what-was-tested-and-what-was-not"


def test_the_checker_sees_a_broken_link(tmp_path: Path) -> None:
    """The checks below could fail: a missing file and a missing anchor are both found."""
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("# Here it is\n")
    page.write_text("[a](there.md#here-it-is) [b](missing.md) [c](there.md#nowhere) `[d](in-code.md)`\n")
    assert links(page) == ["there.md#here-it-is", "missing.md", "there.md#nowhere"]
    assert broken(page) == ["missing.md: no such file", "there.md#nowhere: no heading 'nowhere' in there.md"]


def broken(page: Path) -> list[str]:
    """The relative links of ``page`` that do not resolve, each with why."""
    problems = []
    for target in links(page):
        parts = urlsplit(target)
        if parts.scheme or parts.netloc or target.startswith("mailto:"):
            continue  # absolute URLs: not checked here (no network in the tests)
        path = (page.parent / unquote(parts.path)).resolve() if parts.path else page
        if not path.exists():
            problems.append(f"{target}: no such file")
            continue
        if parts.fragment and path.suffix == ".md" and unquote(parts.fragment) not in anchors(path):
            problems.append(f"{target}: no heading {parts.fragment!r} in {path.name}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken(page) == []


@pytest.mark.parametrize("page", sorted((ROOT / "docs").glob("*.md")), ids=lambda p: p.name)
def test_every_docs_page_says_what_ran_where(page: Path) -> None:
    lines = [line for line in page.read_text().splitlines() if line.strip()]
    assert lines[0].startswith("# ") and lines[1].startswith("*What ran where:"), lines[:2]


def test_every_docs_page_is_linked_from_the_readme() -> None:
    readme = {urlsplit(t).path for t in links(ROOT / "README.md")}
    missing = [p.name for p in (ROOT / "docs").glob("*.md") if f"docs/{p.name}" not in readme]
    assert missing == []


# A doc named in a comment of a deploy/ manifest ("docs/scaling.md#kubernetes"): relative to the
# repository root, checked like a link.
_DOC_REF = re.compile(r"\b(docs/[\w./-]+\.md(?:#[\w-]+)?)")
MANIFESTS = sorted((ROOT / "deploy").rglob("*.yaml"))


def doc_refs_broken(manifest: Path) -> list[str]:
    """The ``docs/...md[#anchor]`` references in ``manifest``'s comments that do not resolve."""
    problems = []
    for line in manifest.read_text().splitlines():
        if "#" not in line:
            continue
        comment = line[line.index("#"):] if not line.lstrip().startswith("#") else line
        for ref in _DOC_REF.findall(comment):
            path, _, fragment = ref.partition("#")
            target = ROOT / path
            if not target.exists():
                problems.append(f"{ref}: no such file")
            elif fragment and fragment not in anchors(target):
                problems.append(f"{ref}: no heading {fragment!r} in {target.name}")
    return problems


def test_the_manifest_checker_sees_a_broken_reference(tmp_path: Path) -> None:
    m = tmp_path / "x.yaml"
    m.write_text("# see docs/nowhere.md\nkind: Service  # docs/scaling.md#no-such-part\n"
                 "# docs/scaling.md#kubernetes\n")
    assert doc_refs_broken(m) == ["docs/nowhere.md: no such file",
                                  "docs/scaling.md#no-such-part: no heading 'no-such-part' in scaling.md"]


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_doc_named_by_a_manifest_exists(manifest: Path) -> None:
    assert doc_refs_broken(manifest) == []
