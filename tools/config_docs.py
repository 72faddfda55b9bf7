"""Write docs/config.md from the config dataclasses: every field, its type, default and docstring.

    python -m tools.config_docs            # rewrite docs/config.md
    python -m tools.config_docs --check    # exit 1 if docs/config.md is out of date (the tests do)
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = [("Config", "top level"), ("RBMConfig", "rbm"), ("LayerConfig", "layers[i]"),
            ("DataConfig", "data"), ("TrainConfig", "train"), ("PipelineConfig", "pipeline"),
            ("BalancerConfig", "balancer"), ("MonitorConfig", "monitor"),
            ("StragglerConfig", "straggler"), ("CheckpointConfig", "checkpoint"),
            ("RunConfig", "run")]

INTRO = """# Config reference

Generated from `pipedbn/config/` by `python -m tools.config_docs`; do not edit by hand.

A config is a YAML file with the sections below. `rbm` holds the training settings of every
layer; an entry of `layers` takes `hidden` (and optionally `visible`) and may override any `rbm`
field for that layer. `layers: [500, 500]` is shorthand for `[{hidden: 500}, {hidden: 500}]`, on
the command line too: `pipedbn train configs/tiny.yaml layers=[32,24,16]`. Override any field on
the command line with a dotted path:
`pipedbn train CONFIG layers.1.hidden=256 rbm.lr=0.05 data.path=[a.npy,b.npy]` (values are YAML;
an index equal to a list's length appends an entry). Unknown keys, wrong types and impossible
values are all reported at once, with a hint, and the command exits with status 2; so is a key
given twice in one mapping (plain YAML would keep the last one silently), naming both lines.
`pipedbn train CONFIG --print-config` prints the resolved config.
"""


def fields(tree: ast.Module, name: str) -> list[tuple[str, str, str, str]]:
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)
    out = []
    body = cls.body
    for i, node in enumerate(body):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            doc = ""
            nxt = body[i + 1] if i + 1 < len(body) else None
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
                doc = " ".join(str(nxt.value.value).split())
            default = ast.unparse(node.value) if node.value is not None else "(required)"
            if default.startswith("field(default_factory="):
                default = default[len("field(default_factory="):-1]
                default = "[]" if default == "list" else f"{default}()"
            out.append((node.target.id, ast.unparse(node.annotation), default, doc))
    return out


def render() -> str:
    # one section per module of pipedbn/config/: their classes read as one module
    tree = ast.Module(body=[node for path in sorted((ROOT / "pipedbn" / "config").glob("*.py"))
                            for node in ast.parse(path.read_text()).body], type_ignores=[])
    parts = [INTRO]
    for cls, section in SECTIONS:
        parts.append(f"\n## `{section}` ({cls})\n\n| field | type | default | meaning |\n"
                     "| --- | --- | --- | --- |\n")
        for name, tp, default, doc in fields(tree, cls):
            tp, doc = tp.replace("|", "\\|"), doc.replace("|", "\\|")  # a table's escape
            parts.append(f"| `{name}` | `{tp}` | `{default}` | {doc} |\n")
    return "".join(parts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    path = ROOT / "docs" / "config.md"
    text = render()
    if args.check:
        ok = path.is_file() and path.read_text() == text
        if not ok:
            print(f"{path} is out of date: run python -m tools.config_docs", file=sys.stderr)
        return 0 if ok else 1
    path.write_text(text)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
