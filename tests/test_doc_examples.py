"""Every config example in README.md and docs/config.md parses: the commands' ``key=value``
overrides (applied to the config they name) and the plan specs, so the docs
cannot drift from the parser again (docs/config.md once documented ``0-1/2x2/3``, which never
parsed)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from conftest import ROOT
from warm_cli import WarmCLI

from pipedbn.balancer import Plan
from pipedbn.config import load_config

DOCS = [ROOT / "README.md", ROOT / "docs" / "config.md"]
OVERRIDE = re.compile(r"^[a-z_]+(\.[a-z0-9_]+)*=")
PLAN = re.compile(r"^\d[\d,\-x@|]*$")


def _code(path: Path) -> list[str]:
    """Fenced blocks and inline code spans of a Markdown file (table escapes undone)."""
    text = path.read_text()
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
    inline = re.findall(r"``?([^`\n]+)``?", re.sub(r"```.*?```", "", text, flags=re.S))
    return [b.replace("\\|", "|") for b in blocks + inline]


def _commands() -> list[tuple[str, str]]:
    out = []
    for path in DOCS:
        for code in _code(path):
            for line in code.replace("\\\n", " ").splitlines():
                line = line.split(" #")[0]
                if re.search(r"pipedbn train\b", line):
                    out.append((path.name, line.strip()))
    return out


def _plans() -> list[tuple[str, str]]:
    return sorted({(p.name, c) for p in DOCS for c in _code(p)
                   if PLAN.match(c) and re.search(r"[|x@]", c)})


def test_the_docs_hold_examples_of_each_kind() -> None:
    assert len(_commands()) >= 10 and len(_plans()) >= 2  # the extraction still finds them


@pytest.mark.parametrize(("doc", "line"), _commands())
def test_every_documented_train_command_parses(doc: str, line: str) -> None:
    words = shlex.split(line.replace("[", "\\[").replace("]", "\\]")) if "'" in line else \
        line.split()
    words = [w.strip("\"'").replace("\\[", "[").replace("\\]", "]") for w in words]
    configs = [w for w in words if w.endswith(".yaml") and (ROOT / w).is_file()]
    overrides = [w for w in words if OVERRIDE.match(w)]
    load_config(ROOT / (configs[0] if configs else "configs/tiny.yaml"), overrides)


@pytest.mark.parametrize(("doc", "spec"), _plans())
def test_every_documented_plan_spec_parses(doc: str, spec: str) -> None:
    layers = max(int(n) for n in re.findall(r"\d+", re.sub(r"(x|@)[\d,\-]+", "", spec))) + 1
    Plan.parse(spec, world=1 << 16, layers=layers)
    load_config(ROOT / "configs" / "tiny.yaml", [f"balancer.plan={spec}",
                                                 f"layers={[8] * layers}".replace(" ", "")])


@pytest.mark.slow
def test_help_is_plain_text_and_describes_every_subcommand(warm: WarmCLI) -> None:
    cli = warm.cli
    proc = cli("--help")
    assert proc.returncode == 0 and "``" not in proc.stdout, proc.stdout  # no raw RST
    for command in ("train", "plan", "export", "eval", "finetune", "sample", "simulate"):
        assert f"\n  {command} " in proc.stdout, command
        sub = cli(command, "--help")
        assert sub.returncode == 0 and "``" not in sub.stdout
        assert sub.stdout.split("\n\n")[1].strip(), sub.stdout  # a description paragraph
