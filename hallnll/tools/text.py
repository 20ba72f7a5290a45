"""One table formatter for everything the tools print: plain text (the terminal) or markdown (report files)."""
from __future__ import annotations


def table(rows, headers, fmt: str = "text") -> str:
    """``rows`` (lists of cells) under ``headers``, each column as wide as its widest cell.

    ``fmt="text"``: columns two spaces apart, a dashed line under the header;
    ``fmt="markdown"``: a pipe table."""
    if fmt not in ("text", "markdown"):
        raise ValueError(f"table format {fmt!r}: use text or markdown")
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h)) for i, h in enumerate(headers)]
    if fmt == "markdown":
        lines = ["| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths)) + " |",
                 "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        lines += ["| " + " | ".join(str(v).ljust(w) for v, w in zip(r, widths)) + " |" for r in rows]
    else:
        lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths)), "  ".join("-" * w for w in widths)]
        lines += ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)
