"""Read a YAML document while keeping the line of every key and value.

Operators fix configuration by line number, so every problem found later
must point at the line it came from. This module turns YAML text into
plain Python values wrapped in `Located` (value + line) and reports YAML
syntax errors and duplicate keys as problems, never as exceptions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a configuration file."""

    file: str
    line: int
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.key}: {self.message}"


@dataclass
class Located:
    """A YAML value and the line it starts on (1-based).

    Mappings hold `dict[str, tuple[int, Located]]` (key line, value);
    sequences hold `list[Located]`; scalars hold the Python value.
    """

    value: object
    line: int
    kind: str  # "map", "seq" or "scalar"
    key_lines: dict[str, int] = field(default_factory=dict)


class _Loader(yaml.SafeLoader):
    pass


def parse(text: str, filename: str) -> tuple[Located | None, list[Problem]]:
    """Parse YAML text; return the root node (None if empty) and problems."""
    problems: list[Problem] = []
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else 1
        what = (err.problem or "invalid YAML").strip()
        if err.context and err.context_mark and err.context_mark.line + 1 != line:
            what += f" ({err.context.strip()} on line {err.context_mark.line + 1})"
        problems.append(Problem(filename, line, "(file)", f"not valid YAML: {what}"))
        return None, problems
    except yaml.YAMLError as err:
        problems.append(Problem(filename, 1, "(file)", f"not valid YAML: {err}"))
        return None, problems
    finally:
        loader.dispose()
    if root is None:
        return None, problems
    return _convert(loader, root, filename, "", problems), problems


def parse_file(path: str) -> Located | None:
    """The root node of the file at `path`, leniently: YAML problems are ignored (None when
    nothing can be read). Raises OSError or UnicodeDecodeError when the file cannot be read."""
    with open(path, encoding="utf-8") as handle:
        root, _ = parse(handle.read(), path)
    return root


def _convert(loader, node, filename, path, problems) -> Located:
    line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolves "<<" merge keys
        items: dict[str, Located] = {}
        key_lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                problems.append(Problem(filename, key_line, path or "(top level)",
                                        "a key must be a plain word, not a list or mapping"))
                continue
            key = str(loader.construct_object(key_node))
            child = f"{path}.{key}" if path else key
            if key in items:
                problems.append(Problem(filename, key_line, child,
                                        f"duplicate key (first given on line {key_lines[key]})"))
                continue
            key_lines[key] = key_line
            items[key] = _convert(loader, value_node, filename, child, problems)
        return Located(items, line, "map", key_lines)
    if isinstance(node, yaml.SequenceNode):
        return Located([_convert(loader, item, filename, f"{path}[{i}]", problems)
                        for i, item in enumerate(node.value)], line, "seq")
    try:
        value = loader.construct_object(node)
    except yaml.YAMLError as err:
        problems.append(Problem(filename, line, path, f"cannot read this value: {err}"))
        value = None
    return Located(value, line, "scalar")
