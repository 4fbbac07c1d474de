"""The inventory file as a document: YAML (JSON is YAML) read within bounds.

PyYAML's ``safe_load`` expands aliases (a 505-byte "billion laughs" took 1.16 GB), recurses
once per nesting level (a deep document ended in RecursionError) and lets a repeated key
silently replace the first (``fail_closed: true`` vanished). Here the file must be a regular
file of at most :data:`MAX_SIZE`, aliases are refused, nesting is bounded by :data:`MAX_DEPTH`
and a key given twice in one mapping is refused; each as a :class:`ConfigError` naming the
file, the line and the key path (``networks.storage.fail_closed``). PyYAML is imported only here.
"""

from __future__ import annotations

from typing import Any

from ipsec_vip import readfile
from ipsec_vip.errors import ConfigError

MAX_SIZE = 16 << 20  # an ansible-inventory --list of thousands of hosts fits
MAX_DEPTH = 50


def load(path: str) -> Any:
    """The one document in ``path`` (None when empty); ConfigError for anything refused."""
    import yaml

    try:
        text = readfile.read(path, MAX_SIZE).decode("utf-8")
    except readfile.Unreadable as e:
        raise ConfigError(f"{path}: cannot read: {e.reason}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid UTF-8") from None
    loader = _loader_class(yaml)(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _no_duplicates(loader, node, "")
        return loader.construct_document(node)
    except _Refused as e:
        raise ConfigError(f"{path}: line {e.line}: {e.where + ': ' if e.where else ''}{e.why}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "?"
        raise ConfigError(f"{path}: {where}: not valid YAML ({getattr(e, 'problem', None) or 'syntax error'})") \
            from None
    finally:
        loader.dispose()


class _Refused(Exception):
    def __init__(self, mark: Any, where: str, why: str) -> None:
        super().__init__(why)
        self.line, self.where, self.why = mark.line + 1, where, why


def _loader_class(yaml: Any) -> Any:
    """SafeLoader refusing aliases and deep nesting while it composes (keeping the key path)."""

    class Loader(yaml.SafeLoader):  # type: ignore[misc]
        def __init__(self, text: str) -> None:
            super().__init__(text)
            self.path: list[str] = []

        def compose_node(self, parent: Any, index: Any) -> Any:
            if isinstance(index, yaml.ScalarNode):
                part = f".{index.value}"
            elif isinstance(index, int):
                part = f"[{index}]"
            else:
                part = "" if parent is None else "(a key)"
            self.path.append(part)
            try:
                where = "".join(self.path).lstrip(".")
                if self.check_event(yaml.AliasEvent):
                    raise _Refused(self.peek_event().start_mark, where,
                                   "aliases (*name) are not accepted: write the value out")
                if len(self.path) > MAX_DEPTH:
                    raise _Refused(self.peek_event().start_mark, where, f"nested deeper than {MAX_DEPTH} levels")
                return super().compose_node(parent, index)
            finally:
                self.path.pop()

    return Loader


def _no_duplicates(loader: Any, node: Any, where: str) -> None:
    """Every mapping of the composed document (depth already bounded) has each key once."""
    import yaml

    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):  # a mapping as a key: the inventory's checks refuse it
                _no_duplicates(loader, value_node, f"{where}.(a key)")
                continue
            key = loader.construct_object(key_node, deep=True)  # 'on' and 'true' are one key, as PyYAML has it
            at = f"{where}.{key}" if where else str(key)
            if key in seen:
                raise _Refused(key_node.start_mark, at, f"key given twice (first on line {seen[key]}): the second "
                               "would silently replace the first")
            seen[key] = key_node.start_mark.line + 1
            _no_duplicates(loader, value_node, at)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _no_duplicates(loader, item, f"{where}[{i}]")
