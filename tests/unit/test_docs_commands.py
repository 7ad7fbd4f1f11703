"""docs/faults.md only shows commands that exist: every command line in its code blocks parses.

`clearline ...` lines go through the CLI's own argparse parser (`cluster.cli.build_parser`); a
command the CLI hands to a module's parser (`clearline chaos ...`) goes through that module's, as do
`python -m MODULE ...` lines; `make TARGET` names a Makefile target. Placeholders such as `<offset>`
are replaced by sample values first. Nothing runs: a parser that accepts the line stops the module
there. So a renamed command, subcommand or flag breaks this test until the document follows.
"""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
from pathlib import Path
from typing import Any, NoReturn

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "faults.md"
FENCE = re.compile(r"^```(\w*)\s*$")
SHELL_BLOCKS = {"sh", "shell", "bash", "console"}
SEPARATORS = {"&&", "||", ";", "|"}
PLACEHOLDERS = {"<node>": "node3", "<mode>": "equivocate", "<offset>": "8", "<home>": "net"}


def build_parser() -> argparse.ArgumentParser:
    """The CLI's parser, wherever the CLI keeps it (cluster/cli.py or the cluster/cli package)."""
    module = importlib.import_module("cluster.cli")
    found = getattr(module, "build_parser", None)
    if found is None:  # a package that does not re-export it: look in its modules
        import pkgutil

        for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
            found = getattr(importlib.import_module(f"cluster.cli.{info.name}"), "build_parser", None)
            if found is not None:
                break
    assert found is not None, "no build_parser in cluster.cli"
    parser = found()
    assert isinstance(parser, argparse.ArgumentParser)
    return parser


def shell_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of the shell code blocks, continuation lines joined."""
    out: list[tuple[int, str]] = []
    in_block, pending, start = False, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        fence = FENCE.match(line)
        if fence:
            in_block = not in_block and fence.group(1) in SHELL_BLOCKS
            continue
        if not in_block:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append((start, (pending + line).strip().removeprefix("$ ")))
        pending = ""
    return out


def commands(line: str) -> list[list[str]]:
    """The argv of each command on a line (split at &&, ||, ; and |), comments dropped, placeholders
    replaced."""
    tokens = shlex.split(line, comments=True)
    argvs: list[list[str]] = [[]]
    for token in tokens:
        if token in SEPARATORS:
            argvs.append([])
            continue
        for placeholder, value in PLACEHOLDERS.items():
            token = token.replace(placeholder, value)
        assert not re.search(r"<[a-z_-]+>", token), f"unknown placeholder {token!r}: add it to PLACEHOLDERS"
        argvs[-1].append(token)
    return [argv for argv in argvs if argv]


DOC_COMMANDS = [(number, argv) for number, line in shell_lines(DOC.read_text()) for argv in commands(line)]


def _ids(items: list[tuple[int, list[str]]]) -> list[str]:
    return [f"line{number}:{' '.join(argv)[:60]}" for number, argv in items]


def _is_python(word: str) -> bool:
    return Path(word).name in {"python", "python3"}


class _Parsed(Exception):
    """Raised by a module's parser once it accepted the line: the module's main goes no further."""


_PARSE_ARGS = argparse.ArgumentParser.parse_args


def _parse_with_module(module_name: str, argv: list[str]) -> None:
    """Hand argv to module_name's main() with every parser stopping right after a successful parse."""

    def parse_then_stop(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> NoReturn:
        _PARSE_ARGS(self, *args, **kwargs)
        raise _Parsed

    module = importlib.import_module(module_name)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
        with pytest.raises(_Parsed):
            module.main(argv)


def _passthrough_module(parser: argparse.ArgumentParser, command: str) -> str | None:
    """The module a `clearline COMMAND` hands its arguments to (chaos, bench), if any."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            module = action.choices[command].get_default("module")
            return module if isinstance(module, str) else None
    return None


def _makefile_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z0-9_-]+):", (ROOT / "Makefile").read_text(), re.M))


def check_command(argv: list[str]) -> None:
    """Fail unless argv parses; raises nothing for a command this test does not know."""
    if argv[0] == "make":
        for word in argv[1:]:
            if "=" not in word and not word.startswith("-") and word not in _makefile_targets():
                pytest.fail(f"`{shlex.join(argv)}`: no Makefile target {word!r}")
        return
    try:
        if argv[0] == "clearline":
            parser = build_parser()
            module = _passthrough_module(parser, argv[1]) if len(argv) > 1 else None
            if module is not None:
                _parse_with_module(module, argv[2:])
            else:
                parser.parse_args(argv[1:])
        elif _is_python(argv[0]) and argv[1:2] == ["-m"] and len(argv) > 2:
            _parse_with_module(argv[2], argv[3:])
    except SystemExit as exc:
        pytest.fail(f"`{shlex.join(argv)}` does not parse (exit {exc.code})")


CHECKED = [(n, argv) for n, argv in DOC_COMMANDS if argv[0] in {"clearline", "make"} or _is_python(argv[0])]


@pytest.mark.parametrize(("number", "argv"), CHECKED, ids=_ids(CHECKED))
def test_a_documented_command_parses(number: int, argv: list[str]) -> None:
    check_command(argv)


def test_the_document_covers_every_fault_and_node_action() -> None:
    """Every `clearline fault` subcommand and `clearline node` action is shown in a code block."""
    shown = {tuple(argv[1:3]) for _, argv in DOC_COMMANDS if argv[0] == "clearline"}
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    faults = next(a for a in sub.choices["fault"]._actions if isinstance(a, argparse._SubParsersAction))
    actions = next(a for a in sub.choices["node"]._actions if a.dest == "action")
    missing = [f"fault {name}" for name in faults.choices if ("fault", name) not in shown]
    missing += [f"node {name}" for name in actions.choices or () if ("node", name) not in shown]
    assert not missing, f"docs/faults.md shows no example of: {', '.join(missing)}"


def test_a_renamed_command_or_flag_would_fail() -> None:
    """The check itself bites: an unknown subcommand, flag, module option or make target is refused."""
    assert len(CHECKED) >= 20, "docs/faults.md lost its examples (or the extraction broke)"
    for argv in (
        ["clearline", "fault", "wal-shred", "node3"],
        ["clearline", "node", "restart", "node3", "--evil", "equivocate"],
        ["clearline", "chaos", "--seeds", "7"],
        ["python", "-m", "node.storage.walcheck", "x.wal", "--cut-at", "8"],
        ["make", "chaos-monkey"],
    ):
        with pytest.raises(pytest.fail.Exception):
            check_command(argv)
