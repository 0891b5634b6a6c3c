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


def test_every_column_of_the_pipeline_outputs_is_described() -> None:
    """Each column that ``run_pipeline`` writes to ``customers.csv`` (the ``customers_out`` frame and the
    action columns) and to ``segments.csv`` (``segment_summary`` with the pipeline's arguments) is named
    in the README's pipeline section; five of customers.csv's and three of segments.csv's were not."""
    import ast
    import inspect

    import pandas as pd

    from clm_torch import pipeline
    from clm_torch.lifecycle.segments import segment_summary

    tree = ast.parse(inspect.getsource(pipeline.run_pipeline))
    calls = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            calls.setdefault(node.targets[0].id, node.value)
    frame = calls["customers_out"]  # pd.DataFrame({...})
    customers = [k.value for k in frame.args[0].keys] + ["action", "reason"]
    seg_call = calls["seg_table"]  # segment_summary(customers_out.assign(...), numeric_cols=..., ...)
    kw = {k.arg: ast.literal_eval(k.value) for k in seg_call.keywords}
    extra = [k.arg for k in seg_call.args[0].keywords]  # the .assign(...) columns
    cols = {c: [0.5] for c in customers} | {c: [["i"]] if c == "top_items" else ["x"] for c in extra}
    segments = list(segment_summary(pd.DataFrame(cols).assign(segment=0), **kw).columns)
    section = README.split("## The pipeline (`clm-pipeline`)", 1)[1].split("\n## ", 1)[0]
    undocumented = [c for c in [*customers, *segments] if f"`{c}`" not in section]
    assert len(customers) >= 16 and len(segments) >= 12, (customers, segments)
    assert not undocumented, f"columns of customers.csv / segments.csv the README does not describe: {undocumented}"
