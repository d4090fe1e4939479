"""The tutorial (docs/intro/tutorial.md) kept honest, cheaply: no broker, no network, no compiler.

Its fenced code blocks and inline code are read as a newcomer would paste them, and checked
against what exists: every ``examples/...`` or ``conf/...`` path is in the repository (or, for a
C program, its source is), every ``maitred`` command line parses with the real command-line
parser (verbs and flags, those the installed transport plugins add included), the options given
to the example programs are options they take, every Python snippet parses and its imports
resolve, the TOML example is a valid config, the defaults the tutorial states are those of
``conf/maitred.toml`` and of the example clients, and every link stays inside ``docs/``."""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import importlib.metadata
import io
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from maitred.core import cli
from maitred.core.config import load_config

ROOT = Path(__file__).resolve().parents[1]
PAGE_DIR = ROOT / "docs" / "intro"
TUTORIAL = PAGE_DIR / "tutorial.md"
TEXT = TUTORIAL.read_text(encoding="utf-8")

# Shell operators that end one command and start the next.
SEPARATORS = {";", "&&", "||", "|", "&", "(", ")"}
MAITRED = {"maitred", ".venv/bin/maitred"}
PATH_RE = re.compile(r"(?<![\w/.])((?:examples|conf)/[\w./-]*[\w/])")


@dataclass(frozen=True)
class Block:
    lang: str
    text: str
    line: int  # of the opening fence, 1-based


def _blocks() -> list[Block]:
    blocks: list[Block] = []
    lines = TEXT.splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^(```+)\s*([\w-]*)\s*$", lines[i])
        if fence is None:
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and lines[i].strip() != fence.group(1):
            body.append(lines[i])
            i += 1
        assert i < len(lines), f"tutorial.md:{start + 1}: unclosed code fence"
        blocks.append(Block(fence.group(2), "\n".join(body) + "\n", start + 1))
        i += 1
    return blocks


BLOCKS = _blocks()


def _prose() -> str:
    """The text outside the fenced blocks."""
    return re.sub(r"^```.*?^```[ \t]*$", "", TEXT, flags=re.S | re.M)


INLINE = re.findall(r"`([^`\n]+)`", _prose())


def _shell_lines(block: Block) -> list[tuple[int, str]]:
    """The command lines of a shell block: all of them, or, when the block shows a session with
    ``$ `` prompts, only the prompted ones (the rest is output)."""
    lines = block.text.splitlines()
    prompted = any(line.startswith("$ ") for line in lines)
    out = []
    for n, line in enumerate(lines, start=block.line + 1):
        if prompted:
            if line.startswith("$ "):
                out.append((n, line[2:]))
        elif line.strip():
            out.append((n, line))
    return out


def _commands(line: str) -> list[list[str]]:
    """Split one shell line into simple commands (words, comments dropped), leading variable
    assignments and ``sudo`` removed."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in SEPARATORS:
            commands.append([])
        else:
            commands[-1].append(token)
    result = []
    for words in commands:
        start = 0
        while start < len(words) and (
            re.match(r"^[A-Z_]+=", words[start]) or words[start] == "sudo"
        ):
            start += 1
        if words[start:]:
            result.append(words[start:])
    return result


SHELL_COMMANDS = [
    (f"tutorial.md:{n}", words)
    for block in BLOCKS
    if block.lang in {"sh", "bash", "shell"}
    for n, line in _shell_lines(block)
    for words in _commands(line)
]


def _parser() -> argparse.ArgumentParser:
    pm, specs = cli._plugins()
    return cli.build_parser(specs, pm)


def _verbs(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("the maitred parser has no verbs")


def test_the_tutorial_has_what_it_promises() -> None:
    langs = {block.lang for block in BLOCKS}
    assert {"sh", "python", "toml", "text"} <= langs
    firsts = {words[0] for _, words in SHELL_COMMANDS}
    for program in ("apt-get", "make", "curl", "node", "npm", "maitred", "python"):
        assert program in firsts, f"no shell command runs {program}"
    for path in (
        "examples/c/mdp_client",
        "examples/c/mdp_worker",
        "examples/curl/call.sh",
        "examples/node/middleman_client.js",
    ):
        assert any(path in words for _, words in SHELL_COMMANDS), f"no shell command runs {path}"
    apt = " ".join(" ".join(w) for _, w in SHELL_COMMANDS if w[0] == "apt-get")
    for package in (
        "build-essential",
        "pkg-config",
        "libzmq3-dev",
        "nodejs",
        "npm",
        "curl",
        "python3-venv",
    ):
        assert f" {package}" in apt, f"apt-get does not install {package}"


def test_every_path_exists() -> None:
    texts = [block.text for block in BLOCKS] + INLINE
    paths = {m.group(1) for text in texts for m in PATH_RE.finditer(text)}
    assert paths, "the tutorial names no examples/ or conf/ path"
    missing = []
    for path in sorted(paths):
        # examples/c/mdp_client is built by `make -C examples/c` from examples/c/mdp_client.c
        if not (ROOT / path).exists() and not (ROOT / f"{path}.c").exists():
            missing.append(path)
    assert not missing, f"the tutorial names paths that do not exist: {missing}"


def test_every_maitred_command_line_parses() -> None:
    parser = _parser()
    checked = 0
    for where, words in SHELL_COMMANDS:
        if words[0] not in MAITRED:
            continue
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                parser.parse_args(words[1:])
            except SystemExit as exc:  # --version and -h exit 0; a usage error exits 2
                assert exc.code == 0, f"{where}: {shlex.join(words)}: {err.getvalue().strip()}"
        checked += 1
    assert checked >= 10


def test_inline_maitred_commands_use_real_verbs_and_flags() -> None:
    """Prose mentions such as `maitred call -b URL` or `maitred serve ...` are often partial
    command lines: only their verb and flags are checked."""
    verbs = _verbs(_parser())
    checked = 0
    for span in INLINE:
        words = span.split()
        if len(words) < 2 or words[0] not in MAITRED or words[1].startswith("-"):
            continue
        assert words[1] in verbs, f"`{span}`: maitred has no verb {words[1]!r}"
        options = verbs[words[1]]._option_string_actions
        for word in words[2:]:
            flag = word.split("=", 1)[0]
            if flag.startswith("-") and flag not in ("-", "--"):
                assert flag in options, f"`{span}`: maitred {words[1]} has no option {flag}"
        checked += 1
    assert checked >= 3


def _getopt(source: Path) -> str:
    match = re.search(r'getopt\(argc, argv, "([^"]*)"\)', source.read_text(encoding="utf-8"))
    assert match is not None, f"no getopt string in {source}"
    return match.group(1)


def test_example_programs_take_the_options_given() -> None:
    checked = 0
    for where, words in SHELL_COMMANDS:
        if words[0] == "make":
            assert words[1:3] == ["-C", "examples/c"], f"{where}: {shlex.join(words)}"
            assert (ROOT / "examples/c/Makefile").is_file()
            checked += 1
        elif words[0].startswith("examples/c/"):
            letters = _getopt(ROOT / f"{words[0]}.c")
            for word in words[1:]:
                if re.fullmatch(r"-\w", word):
                    assert word[1] in letters, f"{where}: {words[0]} has no option {word}"
            checked += 1
        elif words[0] == "node" and words[1].endswith(".js"):
            script = ROOT / words[1]
            assert script.is_file(), f"{where}: {words[1]} does not exist"
            source = script.read_text(encoding="utf-8")
            assert words[2] in ("req", "pubsub"), f"{where}: {words[1]} has no verb {words[2]}"
            for word in words[3:]:
                if word.startswith("--"):
                    assert f"{word[2:]}:" in source, f"{where}: {words[1]} has no option {word}"
            checked += 1
        elif words[0] == "npm":
            assert words[1] == "ci"
            assert (ROOT / "examples/node/package-lock.json").is_file()
            checked += 1
    assert checked >= 8


def _python_sources() -> list[tuple[str, str]]:
    sources = [(f"tutorial.md:{b.line}", b.text) for b in BLOCKS if b.lang == "python"]
    for where, words in SHELL_COMMANDS:
        if words[0] in ("python", "python3") and "-c" in words:
            sources.append((where, words[words.index("-c") + 1]))
    return sources


def test_python_snippets_parse_and_their_imports_exist() -> None:
    sources = _python_sources()
    assert len(sources) >= 6
    for where, source in sources:
        # some snippets are fragments that run inside an async function: allow top-level await
        flags = ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        tree = compile(source, where, "exec", flags=flags, dont_inherit=True)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    importlib.import_module(alias.name)
            elif isinstance(node, ast.ImportFrom):
                assert node.module is not None and node.level == 0, where
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), (
                        f"{where}: {node.module} has no {alias.name}"
                    )


def test_scripts_run_are_scripts_the_tutorial_writes() -> None:
    """`python greet_worker.py` needs a block the text tells the reader to save under that name."""
    prose = _prose()
    for where, words in SHELL_COMMANDS:
        if words[0] in ("python", "python3") and len(words) == 2 and words[1].endswith(".py"):
            assert f"`{words[1]}`" in prose, f"{where}: the tutorial never says what {words[1]} is"


def test_the_config_example_is_valid(tmp_path: Path) -> None:
    tomls = [b for b in BLOCKS if b.lang == "toml"]
    assert tomls
    for block in tomls:
        path = tmp_path / "tutorial.toml"
        path.write_text(block.text, encoding="utf-8")
        load_config(path)


def test_stated_defaults_are_the_real_ones() -> None:
    defaults = tomllib.loads((ROOT / "conf/maitred.toml").read_text(encoding="utf-8"))
    transports = defaults["transports"]
    # "MDP on tcp://127.0.0.1:5555 by default; HTTP and WebSocket off, turned on with flags"
    assert transports["mdp"]["enabled"] is True
    assert transports["mdp"]["endpoints"] == ["tcp://127.0.0.1:5555"]
    assert "http" not in transports and "ws" not in transports
    assert "--http 127.0.0.1:8080" in TEXT and "--ws 127.0.0.1:8764" in TEXT
    # the example clients' defaults, which the tutorial relies on
    call_sh = (ROOT / "examples/curl/call.sh").read_text(encoding="utf-8")
    assert "${MAITRED_HTTP:-http://127.0.0.1:8080}" in call_sh
    node = (ROOT / "examples/node/middleman_client.js").read_text(encoding="utf-8")
    assert "'ws://127.0.0.1:8764/'" in node and "'xyzzy'" in node
    assert f"maitred {importlib.metadata.version('maitred')}" in TEXT


def test_links_stay_inside_docs() -> None:
    """Links are relative and point at pages (mkdocs --strict checks that they resolve); files
    outside docs/ are named as code, not linked."""
    for target in re.findall(r"\]\(([^)\s]+)\)", _prose()):
        if target.startswith("#"):
            continue
        assert "://" not in target and not target.startswith("/"), f"absolute link {target}"
        page = (PAGE_DIR / target.split("#", 1)[0]).resolve()
        assert page.is_relative_to(ROOT / "docs"), f"link outside docs/: {target}"
        assert page.is_file(), f"link to a missing page: {target}"


@pytest.mark.parametrize(
    "line, expected",
    [
        ("cd maitred && . .venv/bin/activate", [["cd", "maitred"], [".", ".venv/bin/activate"]]),
        ("(cd examples/node && npm ci)", [["cd", "examples/node"], ["npm", "ci"]]),
        (
            "curl --data x http://h/v1/services/s; echo  # note",
            [["curl", "--data", "x", "http://h/v1/services/s"], ["echo"]],
        ),
        ("X=1 maitred call a 'b c'", [["maitred", "call", "a", "b c"]]),
    ],
)
def test_command_splitting(line: str, expected: list[list[str]]) -> None:
    assert _commands(line) == expected
