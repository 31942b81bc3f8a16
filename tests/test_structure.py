"""The shape of the code: a file run as a script is imported by no other file, and every script's --help prints
and gives every default."""
import argparse
import ast
import importlib

import pytest

from conftest import ROOT

SCRIPTS = sorted(p.stem for p in ROOT.glob("*.py") if 'if __name__ == "__main__":' in p.read_text())


def imported_modules(path):
    """The top-level names of every module a file imports."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_no_script_is_imported_by_another_file():
    assert {"train", "predict", "evaluate", "data", "visualize"} <= set(SCRIPTS)
    offending = {p.name: sorted(imported_modules(p) & set(SCRIPTS)) for p in ROOT.glob("*.py")}
    assert {name: scripts for name, scripts in offending.items() if scripts} == {}


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


def test_every_script_defines_main_last():
    """One order in every script, as in torchvision's references: helpers first, main() last."""
    assert {name: top_level_functions(ROOT / f"{name}.py")[-1] for name in SCRIPTS} == dict.fromkeys(SCRIPTS, "main")


def test_train_py_calls_augment_py_only_through_its_two_entry_points():
    """An augmentation is a change to augment.py alone: train.py makes the copies once and asks for one epoch's
    augmentation, every other choice is augment.py's."""
    used = {node.attr for node in ast.walk(ast.parse((ROOT / "train.py").read_text()))
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "augment"}
    assert used == {"augment", "for_epoch"}


SHARED_FLAGS = ("--checkpoint", "--data-dir", "--cache-dir", "--device", "--threshold")


def test_shared_flags_are_declared_once_in_cli_py():
    """The flags every script repeats come from cli.py's helpers, so each has one help text."""
    declared = []
    for path in ROOT.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
                    and node.args[0].value in SHARED_FLAGS):
                declared.append((path.name, node.args[0].value))
    assert sorted(name for name, _ in declared) == ["cli.py"] * len(SHARED_FLAGS)
