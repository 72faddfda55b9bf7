"""Loading a config: YAML (strict: a key given twice is an error) -> plain dict -> ``key=value``
overrides -> typed sections -> every section's checks, all problems in one ``ConfigError``.

Overrides use dotted paths with list indices (``layers.1.hidden=256``, ``rbm.lr=0.05``,
``data.path=[a.npy,b.npy]``); values are parsed as YAML.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import yaml

from pipedbn.config.experiment import Config, from_dict
from pipedbn.config.layers import blame_shared, expand_shorthand
from pipedbn.errors import ConfigError


class DuplicateKeyError(yaml.MarkedYAMLError):
    """A key given twice in one YAML mapping (plain YAML keeps the last one silently)."""


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` whose mappings refuse a key given twice, naming both lines."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            with contextlib.suppress(TypeError):  # an unhashable key: the base class says so
                if key in seen:
                    raise DuplicateKeyError(
                        problem=f"key {key!r} is given twice, on lines {seen[key]} and {line} "
                                "(YAML would silently keep only the second); keep one",
                        problem_mark=key_node.start_mark)
                seen[key] = line
        return super().construct_mapping(node, deep)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that refuses duplicate keys: every YAML pipedbn reads goes through
    it (configs, run directories' config.yaml, override values)."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 (a SafeLoader)


class TextError(ValueError):
    """A file that should be UTF-8 text and is not, or cannot be read; the message says which."""


def read_text(path: Path) -> str:
    """The file as UTF-8 text; TextError (one line, with the fix) for bytes that are not UTF-8
    (a binary file, another encoding) or a file that cannot be read."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise TextError(f"not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
                        "save it as UTF-8") from None
    except OSError as e:
        raise TextError(f"cannot read ({e.strerror}); check the file's permissions") from None


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:  # type: ignore[assignment]
    """Read a YAML file (or start empty), apply ``key=value`` overrides and check everything."""
    raw: Any = {}
    source = str(path) if path is not None else "config"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError([f"no such file {str(p)!r} (give the path of a YAML config)"], source)
        try:
            raw = load_yaml(read_text(p)) or {}
        except DuplicateKeyError as e:
            raise ConfigError([str(e.problem)], source) from None
        except yaml.YAMLError as e:
            raise ConfigError([f"not valid YAML: {e}"], source) from None
        except TextError as e:
            raise ConfigError([str(e)], source) from None
        if not isinstance(raw, dict):
            raise ConfigError(["the top level must be a mapping of sections"], source)
    return _from_raw(raw, overrides, source)


def config_from_text(text: str, source: str) -> Config:
    """A config from YAML text (an export file's ``config`` metadata), checked as a file is."""
    try:
        raw = load_yaml(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError([f"not valid YAML: {e}"], source) from None
    if not isinstance(raw, dict):
        raise ConfigError(["the top level must be a mapping of sections"], source)
    return _from_raw(raw, [], source)


def _from_raw(raw: dict[str, Any], overrides: list[str], source: str) -> Config:
    problems: list[str] = []
    expand_shorthand(raw)
    for item in overrides:
        apply_override(raw, item, problems)
        expand_shorthand(raw)
    cfg = from_dict(raw, problems)
    if cfg is not None:
        problems.extend(cfg.problems())
    if problems:
        raise ConfigError(blame_shared(problems, raw), source)
    assert cfg is not None
    return cfg


def apply_override(raw: dict[str, Any], item: str, problems: list[str]) -> None:
    """Set ``a.b.2.c=value`` in the raw dict; an index equal to a list's length appends."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        problems.append(f"override {item!r}: expected key=value, e.g. rbm.lr=0.05")
        return
    try:
        value = load_yaml(text) if text != "" else ""
    except DuplicateKeyError as e:
        problems.append(f"override {key}: {e.problem}")
        return
    except yaml.YAMLError:
        value = text
    parts = key.split(".")
    node: Any = raw
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit():
                problems.append(f"override {key}: {where!r} must be a list index (0, 1, ...)")
                return
            i = int(part)
            if i > len(node):
                problems.append(
                    f"override {key}: index {i} is out of range (the list has {len(node)} "
                    f"entries; index {len(node)} appends one)"
                )
                return
            if i == len(node):
                node.append({} if not last else value)
            if last:
                node[i] = value
            else:
                if node[i] is None:
                    node[i] = {}
                node = node[i]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = [] if part == "layers" else {}
                node = node[part]
        else:
            problems.append(f"override {key}: {'.'.join(parts[:depth])!r} is not a section or list")
            return
