"""Tables the way docker prints them: left-aligned columns, three spaces apart, widths from the content."""

from __future__ import annotations


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(line[i])) for line in [header, *rows]) for i in range(len(header))]
    for line in [header, *rows]:
        print("   ".join(f"{str(cell):<{width}}" for cell, width in zip(line, widths, strict=True)).rstrip())
