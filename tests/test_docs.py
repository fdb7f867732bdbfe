"""README.md and docs/*.md hold as written: every relative link points at a file of the repository, and every
`python -m stream_r1 ...` / `python -m training...` command they show names a real subcommand and real flags and
parses with that command's own argparse parser (parsed only: nothing is run, no model is built).

Commands are read from fenced code blocks (full parse) and from inline code spans (subcommand and flags checked;
a span may show a flag without its value). Placeholders (`FILE`, `PATH`, `<path>`, `runs/…`, `...`) are replaced by
a temporary path; `a|b|c` alternatives take the first; `[--flag]` optional brackets are dropped.
"""
from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

pytestmark = pytest.mark.docs          # fast: file reads and argparse only (well under 30 s)

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`\n]+)`")
PLACEHOLDERS = {"FILE", "PATH", "DIR", "NAME", "N", "FLAGS", "T"}


# ---- links ------------------------------------------------------------------------------------------------------

def _links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))          # code blocks hold no links
    return [m.group(1) for m in LINK.finditer(text)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    missing = []
    for target in _links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue                                                  # https:, mailto:, an anchor on the page
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            missing.append(target)
    assert not missing, f"{page.relative_to(ROOT)}: links to missing files: {missing}"


def test_the_pages_exist_and_readme_links_every_docs_page():
    readme_links = {(ROOT / t.split("#", 1)[0]).resolve() for t in _links(ROOT / "README.md")}
    unlinked = [p.name for p in PAGES[1:] if p.resolve() not in readme_links]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


# ---- commands ---------------------------------------------------------------------------------------------------

def _shell_commands(block: str) -> list[str]:
    """One string per command line of a shell block: continuations joined, comments dropped."""
    lines, cur = [], ""
    for raw in block.splitlines():
        line = raw.rstrip()
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        lines.append(cur + line)
        cur = ""
    if cur:
        lines.append(cur)
    return lines


def _python_m_invocations(line: str) -> list[tuple[str, list[str]]]:
    """(module, args) of every `python -m stream_r1|training...` in a shell line (`&&`, `;`, `|` split commands;
    `python -m torch.distributed.run ... -m training.run` counts as training.run)."""
    try:
        lex = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lex.whitespace_split = True
        lex.commenters = "#"
        tokens = list(lex)
    except ValueError:                                                # an unclosed quote in prose
        return []
    out, cmd = [], []
    for tok in tokens + [";"]:
        if tok in (";", "&&", "||", "|", "&"):
            for i in range(len(cmd) - 1):
                if cmd[i] == "-m" and re.match(r"^(stream_r1|training)(\.|$)", cmd[i + 1]):
                    if any(re.match(r"^python3?$", t) for t in cmd[:i]):
                        out.append((cmd[i + 1], cmd[i + 2:]))
                        break
            cmd = []
        else:
            cmd.append(tok)
    return out


def _clean(args: list[str], tmp: str) -> list[str]:
    out = []
    for a in args:
        a = a.strip("[]")
        if not a or a in ("...", "…") or a.startswith("->"):
            continue
        if a.startswith("-") and "|" in a:                            # --tts-sinking auto|on|off is a value, not this
            a = a.split("|", 1)[0]
        elif "|" in a:
            a = a.split("|", 1)[0]
        if a in PLACEHOLDERS or a.startswith("<") or "…" in a:
            a = tmp
        out.append(a)
    return out


def _commands(page: Path):
    """(module, args, full) for every command on the page; full = from a code block (parse it all)."""
    text = page.read_text(encoding="utf-8")
    for block in FENCE.findall(text):
        for line in _shell_commands(block):
            for mod, args in _python_m_invocations(line):
                yield mod, args, True
    prose = FENCE.sub("", text)
    for span in INLINE.findall(prose):
        if re.search(r"python3? -m (stream_r1|training)", span):
            for mod, args in _python_m_invocations(span):
                yield mod, args, False


class _Parsed(Exception):
    def __init__(self, parser):
        self.parser = parser


def _parser(module: str, argv: list[str]) -> tuple[argparse.ArgumentParser, list[str]]:
    """The argparse parser of `python -m module argv...` and the arguments it parses, built but not run: the
    builder function where the module has one, else its main() stopped at its first parse_args call."""
    if module == "stream_r1" and argv[:1] == ["bench"]:
        from stream_r1.bench import parser as bench_parser       # bench parses its own flags
        return bench_parser(), argv[1:]
    if module == "stream_r1":
        from stream_r1.cli import build_parser
        return build_parser(), argv
    import importlib
    mod = importlib.import_module(module)
    entry = getattr(mod, "parse_args", None) or mod.main         # training.run: parse_args(argv)

    def stop(self, args=None, namespace=None):
        raise _Parsed(self)
    orig = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = stop
    try:
        entry(argv)
    except _Parsed as done:
        return done.parser, argv
    finally:
        argparse.ArgumentParser.parse_args = orig
    raise AssertionError(f"{module} did not build an argparse parser")


def _option_strings(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """Every flag of the parser, and of the subcommand named in argv (when it has subcommands)."""
    opts = set(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            positional = [a for a in argv if not a.startswith("-")]
            assert positional and positional[0] in action.choices, \
                f"unknown subcommand {positional[:1]} (one of {sorted(action.choices)})"
            opts |= _option_strings(action.choices[positional[0]], argv[argv.index(positional[0]) + 1:])
    return opts


def _all_commands():
    for page in PAGES:
        for mod, args, full in _commands(page):
            yield pytest.param(page, mod, args, full, id=f"{page.relative_to(ROOT)}: {mod} {' '.join(args)[:60]}")


COMMANDS = list(_all_commands())


def test_the_pages_show_commands():
    mods = {c.values[1] for c in COMMANDS}
    assert {"stream_r1", "training.run"} <= mods, mods


@pytest.mark.parametrize("page,module,args,full", COMMANDS)
def test_every_command_shown_parses(page, module, args, full, tmp_path):
    argv = _clean(args, str(tmp_path / "x"))
    shown = f"{page.relative_to(ROOT)}: `python -m {module} {' '.join(args)}`"
    parser, rest = _parser(module, argv)
    if not rest:                                   # a bare mention of the entry point
        return
    flags = [a.split("=", 1)[0] for a in rest if a.startswith("--")]
    unknown = [f for f in flags if f not in _option_strings(parser, rest)]
    assert not unknown, f"{shown} names flags its parser lacks: {unknown}"
    if full:                                       # a command block: the whole line must parse
        try:
            parser.parse_args(rest)
        except SystemExit as e:
            pytest.fail(f"{shown} does not parse (exit {e.code})")


def test_the_readme_lists_the_shapes_world_vocabulary():
    """The warnings about unknown words send users to the README's vocabulary: every colour, shape, motion and
    background the model knows is listed there, and every word of it is a word the model knows."""
    import re

    from stream_r1.shapes import BACKGROUNDS, COLORS, MOTIONS, SHAPES, vocabulary
    text = (ROOT / "README.md").read_text()
    start = text.index("**Shapes-world vocabulary**")
    block = text[start:text.index("\n\n", start)]
    for kind, names in (("colours", COLORS), ("shapes", SHAPES), ("motions", MOTIONS), ("backgrounds", BACKGROUNDS)):
        line = next(ln for ln in block.splitlines() if ln.startswith(f"- {kind}:"))
        items = {re.sub(r"\(or \w+\)", "", n).strip(" ;.") for n in line.split(":", 1)[1].split(",")}
        assert set(names) <= items, (kind, set(names) - items)
    listed = {w for ln in block.splitlines() if ln.startswith("- ") for w in re.findall(r"[a-z]+", ln.split(":", 1)[1])}
    assert listed - {"or"} <= vocabulary(), listed - {"or"} - vocabulary()
