"""The shape of the code. The top level is the report's house: its scripts and the modules a student edits. lib/
holds what is only imported, tools/ the scripts of the other make targets. A script is imported by no other file,
the library imports no script, no import runs in a circle, and every script's --help prints and gives every
default."""
import argparse
import ast
import importlib

import pytest

from conftest import ROOT

TOP_MODULES = {"augment", "data", "losses", "model"}  # imported by the scripts, edited by students
TOP_SCRIPTS = {"evaluate", "predict", "train", "visualize"}
HUB = {"hubconf"}  # torch.hub looks for it at the root
LIB = sorted(p.stem for p in (ROOT / "lib").glob("*.py") if p.stem != "__init__")
PATH_SETTER = "project_root"  # tools/project_root.py: imported first by each tool, so lib/ imports from the root
TOOLS = sorted(p.stem for p in (ROOT / "tools").glob("*.py") if p.stem != PATH_SETTER)
SCRIPTS = sorted(TOP_SCRIPTS) + TOOLS
PROJECT_FILES = sorted([*ROOT.glob("*.py"), *(ROOT / "lib").glob("*.py"), *(ROOT / "tools").glob("*.py")])


def module_name(path):
    return f"lib.{path.stem}" if path.parent.name == "lib" else path.stem


def imported_modules(path):
    """Every project module a file imports (lib.x for the library's, the name for the top level's), lazy imports
    inside functions included."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names |= {f"lib.{alias.name}" for alias in node.names} if node.module == "lib" else {node.module}
    return names


def test_the_top_level_holds_the_report_scripts_and_no_library_module():
    assert {p.stem for p in ROOT.glob("*.py")} == TOP_MODULES | TOP_SCRIPTS | HUB
    runs_as_script = {p.stem for p in ROOT.glob("*.py") if 'if __name__ == "__main__":' in p.read_text()}
    assert runs_as_script == TOP_SCRIPTS
    assert [name for name in LIB if 'if __name__ == "__main__":' in (ROOT / "lib" / f"{name}.py").read_text()] == []
    assert all('if __name__ == "__main__":' in (ROOT / "tools" / f"{name}.py").read_text() for name in TOOLS)


def test_the_tools_find_the_project_in_one_named_way():
    """No tool repeats path arithmetic: each imports tools/project_root.py before any project module."""
    for name in TOOLS:
        text = (ROOT / "tools" / f"{name}.py").read_text()
        assert "sys.path" not in text, name
        first = [node for node in ast.parse(text).body if isinstance(node, (ast.Import, ast.ImportFrom))
                 and any(m.split(".")[0] in {"lib", PATH_SETTER} | TOP_MODULES for m in imported_modules_of(node))]
        assert first and PATH_SETTER in imported_modules_of(first[0]), name


def imported_modules_of(node):
    return [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module]


def test_no_script_is_imported_by_another_file():
    offending = {str(p.relative_to(ROOT)): sorted(imported_modules(p) & set(SCRIPTS)) for p in PROJECT_FILES}
    assert {name: scripts for name, scripts in offending.items() if scripts} == {}


def test_the_library_imports_only_the_library():
    """lib/ and the top-level modules import each other (model.py's architecture is what checkpoints load) but
    never a script, and never a name that is not a module of the project or a package."""
    library = {f"lib.{name}" for name in LIB} | TOP_MODULES
    for path in PROJECT_FILES:
        if module_name(path) in library:
            ours = {m for m in imported_modules(path) if m.split(".")[0] == "lib" or m in TOP_MODULES | set(SCRIPTS)}
            assert ours <= library, path


def test_the_library_imports_no_top_level_file_but_model_py_and_its_map_names_every_module():
    """lib/ takes what the student edits (a loss, an augmentation) as arguments, resolved once by the scripts; only
    model.py's build_model, which checkpoints load, is imported. lib/__init__.py's map names every module."""
    for name in LIB:
        top = {m for m in imported_modules(ROOT / "lib" / f"{name}.py") if m in TOP_MODULES}
        assert top <= {"model"}, (name, top)
    text = (ROOT / "lib" / "__init__.py").read_text()
    assert [name for name in LIB if f"{name}.py" not in text] == []


def test_no_import_runs_in_a_circle():
    library = {f"lib.{name}" for name in LIB} | TOP_MODULES
    graph = {module_name(p): imported_modules(p) & library for p in PROJECT_FILES}

    def cycle_from(start, path):
        for nxt in sorted(graph.get(path[-1], ())):
            if nxt == start:
                return path + [nxt]
            if nxt not in path:
                found = cycle_from(start, path + [nxt])
                if found:
                    return found
        return None
    assert [cycle for m in sorted(library) if (cycle := cycle_from(m, [m]))] == []


class Captured(Exception):
    def __init__(self, parser):
        self.parser = parser


def parsers(script, monkeypatch):
    """The script's argument parser (and its subcommands' parsers), caught as main() is about to parse."""
    def capture(self, *args, **kwargs):
        raise Captured(self)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(Captured) as caught:
        importlib.import_module(script).main()
    found = [caught.value.parser]
    for action in found[0]._actions:
        if isinstance(action, argparse._SubParsersAction):
            found += list(action.choices.values())
    return found


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_help_gives_every_default(script, monkeypatch):
    missing = []
    for parser in parsers(script, monkeypatch):
        assert "usage:" in parser.format_help()  # formats every flag's text: a bare % in one breaks --help
        formatter = parser._get_formatter()
        for action in parser._actions:
            unset = action.default is None or action.default is False or action.default == []
            if (action.option_strings and not unset and action.default is not argparse.SUPPRESS
                    and "default" not in (formatter._get_help_string(action) or "")):
                missing.append(f"{parser.prog} {action.option_strings[0]} (default {action.default!r})")
    assert missing == []


def top_level_functions(path):
    return [node.name for node in ast.parse(path.read_text()).body if isinstance(node, ast.FunctionDef)]


def script_path(name):
    return ROOT / f"{name}.py" if name in TOP_SCRIPTS else ROOT / "tools" / f"{name}.py"


def test_every_script_defines_main_last():
    """One order in every script, as in torchvision's references: helpers first, main() last."""
    assert {name: top_level_functions(script_path(name))[-1] for name in SCRIPTS} == dict.fromkeys(SCRIPTS, "main")


def augment_calls(name):
    tree = ast.parse((ROOT / f"{name}.py").read_text())
    return {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "augment"}


def test_augmentation_has_one_place_per_path():
    """An augmentation is a change to augment.py alone: data.py makes the fixed copies, train.py asks for each
    epoch's random draws and records which of the two its flags apply; every other choice is augment.py's."""
    assert augment_calls("data") == {"fixed_copies"}
    assert augment_calls("train") == {"for_epoch", "applied"}


SHARED_FLAGS = ("--checkpoint", "--data-dir", "--cache-dir", "--device", "--threshold")


def test_shared_flags_are_declared_once_in_cli_py():
    """The flags every script repeats come from lib/cli.py's helpers, so each has one help text."""
    declared = []
    for path in PROJECT_FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
                    and node.args[0].value in SHARED_FLAGS):
                declared.append((str(path.relative_to(ROOT)), node.args[0].value))
    assert sorted(name for name, _ in declared) == ["lib/cli.py"] * len(SHARED_FLAGS)


def test_train_py_reads_in_one_sitting():
    """The file a student reads most: at most 400 lines, no function over 50 (the run folder's plumbing is
    lib/run_folder.py's, torchrun's arithmetic lib/distributed.py's)."""
    source = (ROOT / "train.py").read_text()
    assert len(source.splitlines()) <= 400
    long = {node.name: node.end_lineno - node.lineno + 1 for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno + 1 > 50}
    assert long == {}
