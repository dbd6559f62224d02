"""The README is the user's manual: short, and every command in it (and in docs/) parses as written."""
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"


def commands(text: str) -> list[str]:
    """Every `python -m lowlevel.X ...` given as code: an indented line, or inline code."""
    found = []
    for line in text.splitlines():
        spans = [line.strip()] if line.startswith("    ") else re.findall(r"`([^`]+)`", line)
        for span in spans:
            m = re.search(r"python -m lowlevel\.[a-z_]+.*", span)
            if m:
                found.append(m.group(0).split("  #")[0].strip())
    return found


def parser_of(module: str):
    import importlib
    if module == "train":
        from lowlevel.config import Config
        return Config.parser()
    return importlib.import_module(f"lowlevel.{module}").parser()


def test_the_readme_is_read_in_five_minutes():
    assert len(README.read_text()) < 12_000


DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", DOCS, ids=[p.name for p in DOCS])
def test_every_command_parses_with_its_flags(doc):
    found = commands(doc.read_text())
    assert found or doc != README
    for command in found:
        words = shlex.split(command)
        module = words[2].split(".", 1)[1]
        args = words[3:]
        if module == "bench":  # `python -m lowlevel.bench --quick` means `bench step --quick`
            from lowlevel.bench import with_subcommand
            args = with_subcommand(args)
        if not args or args == ["--help"]:  # the name of a command: it must exist
            parser_of(module)
            continue
        try:
            if module == "compare":  # the flags it does not know go to every run: train's
                parser_of("train").parse_args(parser_of(module).parse_known_args(args)[1])
            else:
                parser_of(module).parse_args(args)
        except SystemExit as e:
            raise AssertionError(f"{doc.name}: `{command}` does not parse ({e})") from None


def test_the_readme_names_every_command_module():
    text = README.read_text()
    for module in ("data", "train", "evaluate", "summary", "plots", "bench", "inspect", "compare", "export"):
        assert f"python -m lowlevel.{module}" in text, module
