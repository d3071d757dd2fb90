"""The results table that ``Trainer.validate``/``test`` print."""

from __future__ import annotations


def print_results(results: list[dict[str, float]], stage: str) -> None:
    """The table ``validate``/``test`` print with ``verbose=True``: one row per metric, one column per dataloader."""
    names = sorted({name for result in results for name in result})
    if not names:
        return
    header = [f"{stage} metric", *(f"DataLoader {i}" for i in range(len(results)))]
    rows = [[name, *(f"{r[name]:.6g}" if name in r else "" for r in results)] for name in names]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    rule = "─" * (sum(widths) + 3 * (len(widths) - 1))
    lines = [rule, "   ".join(h.center(w) for h, w in zip(header, widths)), rule]
    lines += ["   ".join(cell.center(w) for cell, w in zip(row, widths)) for row in rows]
    lines.append(rule)
    print("\n".join(lines))
