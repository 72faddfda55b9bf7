"""Where benchmark tools keep their results: a marked section of docs/benchmarks.md each."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"


def write_section(name: str, text: str, doc: Path = DOC) -> None:
    """Replace the text between ``<!-- name:begin -->`` and ``<!-- name:end -->`` (appended at
    the end the first time); the rest of the page is left as it is."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    body = doc.read_text()
    if begin in body:
        head, rest = body.split(begin, 1)
        tail = rest.split(end, 1)[1]
    else:
        head, tail = body.rstrip("\n") + "\n\n", "\n"
    doc.write_text(f"{head}{begin}\n{text}\n{end}{tail}")


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write a matplotlib figure as a PNG (its folder made if need be) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def publish(result: dict[str, Any], json_path: Path, text: str, section: str | None = None
            ) -> None:
    """A bench tool's ending: its results to ``json_path``, its report to stdout and, given a
    ``section``, into docs/benchmarks.md."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    print(text)
    print(f"\nwrote {json_path}")
    if section is not None:
        write_section(section, text)
