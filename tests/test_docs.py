"""The README and the docs name only paths that exist: every source file they mention (by its path from the
repository's root, or from the page's own folder for a link) and every path into one of the repository's folders.
What runs write (runs/..., best.pt, config.json) is not checked: it exists only after a run."""
import re

import pytest

from conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), ROOT / "models" / "README.md"]
FOLDERS = ("docs/", "lib/", "models/", "tests/", "tools/", "web/")
SOURCE = (".py", ".sh", ".js", ".html", ".css")
# a word that looks like a path: optional ../ or ./, folders, a name with an extension
PATH = re.compile(r"(?<![\w/.<{*$-])((?:\.\.?/)?(?:[\w.-]+/)*[\w-]+\.[a-z]{2,4})\b(?!::)")  # file::test: below


def repository_paths(doc):
    return sorted({m.group(1) for m in PATH.finditer(doc.read_text())
                   if m.group(1).endswith(SOURCE) or m.group(1).lstrip("./").startswith(FOLDERS)})


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(ROOT)))
def test_docs_name_only_paths_that_exist(doc):
    missing = [p for p in repository_paths(doc) if not ((ROOT / p).exists() or (doc.parent / p).exists())]
    assert missing == []


def guarantees():
    """docs/faults.md's guarantees: each bullet's text, its wrapped lines joined."""
    found = []
    for line in (ROOT / "docs" / "faults.md").read_text().splitlines():
        if line.startswith("- "):
            found.append(line)
        elif line.startswith("  ") and found:
            found[-1] += " " + line.strip()
    return found


def test_every_guarantee_names_tests_that_exist():
    """A guarantee once given stays given: faults.md names the tests behind each one, and each exists."""
    bullets = guarantees()
    assert len(bullets) >= 30
    assert [b[:60] for b in bullets if not re.search(r"test_\w+\.py::test_\w+", b)] == []
    missing = []
    for bullet in bullets:
        for file, test in re.findall(r"(test_\w+\.py)::(test_\w+)", bullet):
            path = ROOT / "tests" / file
            if not path.is_file() or not re.search(rf"^def {test}\(", path.read_text(), re.M):
                missing.append(f"{file}::{test}")
    assert missing == []
