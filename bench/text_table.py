"""Plain-text tables for the bench reports: first column left-aligned, the rest right."""


def render(rows: list[list[str]]) -> str:
    """`rows[0]` is the header; a rule goes under it."""
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = [
        "  ".join(
            cell.ljust(w) if c == 0 else cell.rjust(w)
            for c, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
