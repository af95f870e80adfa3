"""Workflow YAML read as GitHub reads it, keeping where each key was written.

GitHub's parser is YAML 1.2-like: ``on``, ``yes`` and ``no`` are strings (PyYAML's
YAML 1.1 would make ``on:`` the boolean True) and dates stay strings. Every mapping
comes back as a ``Located`` dict that knows its own line and each key's, so a
validation error can say ``ci.yml:12: jobs.test.steps[2].uses: ...``.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from ci_runner.errors import UsageError


class WorkflowError(UsageError):
    """A workflow file that cannot be run as written: one line naming file, line, key."""


class Located(dict[str, Any]):
    """A mapping from a workflow file, with the line (1-based) of itself and its keys."""

    line: int = 0
    lines: dict[str, int]

    def line_of(self, key: str) -> int:
        return self.lines.get(key, self.line)


class _Loader(yaml.SafeLoader):
    pass


# Only true/false are booleans; on/off/yes/no stay strings, as in GitHub's parser.
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers
            if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"))


def _mapping(loader: _Loader, node: yaml.MappingNode) -> Located:
    loader.flatten_mapping(node)
    result = Located()
    result.line = node.start_mark.line + 1
    result.lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, (str, int, float, bool)) or key is None:
            raise WorkflowError(f"line {key_node.start_mark.line + 1}: a key must be a"
                                f" string, not {key!r}")
        key = str(key) if not isinstance(key, bool) else str(key).lower()
        if key in result:
            raise WorkflowError(f"line {key_node.start_mark.line + 1}: {key!r} appears twice"
                                " in the same mapping")
        result[key] = loader.construct_object(value_node, deep=True)
        result.lines[key] = key_node.start_mark.line + 1
    return result


_Loader.add_constructor("tag:yaml.org,2002:map", _mapping)


def load_yaml(text: str | bytes, where: str) -> Any:
    """Parse one workflow file; errors name ``where`` and the line."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except WorkflowError as exc:
        raise WorkflowError(f"{where}: {exc.message}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise WorkflowError(f"{where}{line}: not valid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise WorkflowError(f"{where}: not valid YAML: {exc}") from None
