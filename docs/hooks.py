"""mkdocs hooks: the pages generated from the code, and the result figures the pages show.

- ``<!-- config-table -->`` in a page becomes the table of every `maml_rl.config.Config`
  field: its key, default and docstring (read from the source), so the configuration
  reference cannot drift from the code (tests/test_docs.py checks that every field is in it).
- ``<!-- changelog -->`` becomes CHANGELOG.md, the one file that says what changed when.
- A page's image link into ``experiments/results/`` (``../experiments/results/...png``) is
  served from the repository's file itself: the site carries a copy, the repository does not.
"""

from __future__ import annotations

import ast
import dataclasses
import itertools
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULT_LINK = re.compile(r"\]\((?:\.\./)*(experiments/results/[^)\s]+)\)")


def field_docstrings() -> dict[str, str]:
    """Config field -> its docstring (the string literal under the field in config.py)."""
    tree = ast.parse((ROOT / "maml_rl" / "config.py").read_text())
    (config,) = (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Config")
    docs: dict[str, str] = {}
    for node, after in itertools.pairwise(config.body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def default_text(field: dataclasses.Field[Any]) -> str:
    """A field's default as it reads in a YAML config."""
    import yaml

    if field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        value = field.default
    if isinstance(value, tuple):
        value = list(value)
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def config_table() -> str:
    """The markdown table of every Config field, in the order Config declares them."""
    from maml_rl.config import Config

    docs = field_docstrings()
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for field in dataclasses.fields(Config):
        meaning = docs.get(field.name, "").replace("|", "\\|")
        rows.append(f"| `{field.name}` | `{default_text(field)}` | {meaning} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if "<!-- config-table -->" in markdown:
        markdown = markdown.replace("<!-- config-table -->", config_table())
    if "<!-- changelog -->" in markdown:
        changelog = (ROOT / "CHANGELOG.md").read_text().split("\n", 1)[1]  # without its title
        markdown = markdown.replace("<!-- changelog -->", changelog)
    return markdown


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    docs_dir = Path(config["docs_dir"])
    wanted = {m for page in docs_dir.rglob("*.md") for m in RESULT_LINK.findall(page.read_text())}
    for target in sorted(wanted):
        if (ROOT / target).is_file():  # a missing one stays a broken link: --strict fails
            files.append(File(target, str(ROOT), config["site_dir"], config["use_directory_urls"]))
    return files
