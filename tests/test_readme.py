"""The README's links and its config tree agree with the repository (no training: a few milliseconds)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")
LINKED_DOCS = [REPO / "README.md", *sorted((REPO / "experiments" / "results").glob("*.md"))]


@pytest.mark.parametrize("doc", LINKED_DOCS, ids=lambda p: p.name)
def test_every_relative_link_resolves(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    links = [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:|#", t)]
    missing = [t for t in links if not (doc.parent / t.split("#")[0]).exists()]
    assert not missing, f"{doc.relative_to(REPO)} links to files that do not exist: {missing}"


def _config_tree() -> dict[str, set[str]]:
    """``group -> options`` of the README's "The config tree" block, for the groups whose comment lists
    them as ``a | b | c`` (a comment may go on over lines that start with ``│  #``)."""
    block = README.split("## The config tree", 1)[1].split("```", 2)[1]
    entries: list[list[str]] = []
    for line in block.splitlines():
        m = re.match(r"[├└]── (\w+)/\s+#\s*(.*)", line)
        if m:
            entries.append([m.group(1), m.group(2)])
        elif re.match(r"│\s+#", line) and entries:
            entries[-1][1] += " " + line.split("#", 1)[1]
    return {g: {re.match(r"\s*(\w+)", part).group(1) for part in comment.split("|")}
            for g, comment in entries if "|" in comment}


def test_the_config_tree_lists_every_option_of_its_groups() -> None:
    tree = _config_tree()
    assert {"data", "model", "trainer", "logger", "callbacks", "experiment", "debug"} <= set(tree)
    for group, listed in tree.items():
        files = {p.stem for p in (REPO / "configs" / group).glob("*.yaml")}
        assert listed == files, f"README's configs/{group}/ lists {sorted(listed)}; the folder holds {sorted(files)}"
