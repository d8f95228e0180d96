"""YAML for config files: PyYAML's safe loader, with duplicate keys reported instead of dropped.

YAML 1.2 says the keys of a mapping are unique, but PyYAML (like most loaders) keeps the last
value and says nothing. In a config that hides mistakes: a list item that lost its ``- `` merges
into the item above it, and a whole camera disappears (field case 11)::

    streams:
      - id: front
        url: rtsp://cam/front
        id: back            # line 4: duplicate key 'id' (first at line 2)
        url: rtsp://cam/back

:class:`UniqueKeyLoader` checks every mapping, at every nesting level, and records each
duplicate with its line; :func:`load_yaml` returns the data and the duplicates so that the
caller can report them together with every other problem of the file. Merge keys (``<<: *base``)
are YAML's explicit way to override, so keys that come from a merge are not duplicates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

__all__ = ["DuplicateKey", "UniqueKeyLoader", "load_yaml"]


@dataclass(frozen=True)
class DuplicateKey:
    """A key written twice in one mapping: its text, and the 1-based lines and columns."""

    key: str
    line: int
    column: int
    first_line: int
    in_list: bool = False  # the mapping is an item of a block list

    def __str__(self) -> str:
        hint = "; did the next list item lose its '- '?" if self.in_list and self.line > self.first_line else ""
        return (f"line {self.line}, column {self.column}: duplicate key {self.key!r} (already set "
                f"at line {self.first_line} of the same mapping{hint})")


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that records duplicate mapping keys in ``self.duplicates``.

    The value that comes last still wins (as in ``yaml.safe_load``), so the rest of the file can
    be checked too; a caller must treat any recorded duplicate as an error.
    """

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self.duplicates: list[DuplicateKey] = []
        self._list_items: set[int] = set()  # ids of mapping nodes that are items of a list

    def construct_sequence(self, node: yaml.SequenceNode, deep: bool = False) -> list[Any]:
        self._list_items.update(id(child) for child in node.value if isinstance(child, yaml.MappingNode))
        return super().construct_sequence(node, deep=deep)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        # Check the keys as written, before flatten_mapping() adds those of merged mappings.
        seen: dict[Any, int] = {}  # key -> 0-based line of its first occurrence
        for key_node, _value in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
                if first is None:
                    seen[key] = key_node.start_mark.line
                    continue
            except TypeError:  # an unhashable key: the base class reports it
                continue
            mark = key_node.start_mark
            self.duplicates.append(DuplicateKey(str(key), mark.line + 1, mark.column + 1, first + 1,
                                                id(node) in self._list_items))
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> tuple[Any, list[DuplicateKey]]:
    """Parse ``text`` safely; returns ``(data, duplicates)``.

    Raises ``yaml.YAMLError`` (``MarkedYAMLError`` with a line) for a syntax error.
    """
    loader = UniqueKeyLoader(text)
    try:
        return loader.get_single_data(), loader.duplicates
    finally:
        loader.dispose()
