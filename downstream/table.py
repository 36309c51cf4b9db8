"""Markdown tables declared as data: a table is its columns, each a header and how to
write one row's cell. The report and the CLI summary render through this one function."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

R = TypeVar("R")


@dataclass(frozen=True)
class Column(Generic[R]):
    header: str
    cell: Callable[[R], str]


@dataclass(frozen=True)
class Table(Generic[R]):
    columns: tuple[Column[R], ...]

    def render(self, rows: Iterable[R]) -> list[str]:
        """Header line, separator line, one line per row."""
        return [_line(c.header for c in self.columns), "|" + "---|" * len(self.columns),
                *(_line(c.cell(r) for c in self.columns) for r in rows)]


def _line(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cells) + " |"
