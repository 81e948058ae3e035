"""The demo's numbers: mean ± std over identities per method, paired Δ between methods, markdown tables."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from avatar_lightning.demo.methods import METHODS, SCORES, SPLITS, Fit

#: Paired differences the table reports, ``summary key -> (a, b)`` meaning a − b per identity; a pair
#: appears when both methods ran. ``delta`` keeps its name (results.json of earlier demo runs).
PAIRS = {"delta": ("inversion", "baseline"),
         "delta_enrollment": ("enrollment", "baseline"),
         "delta_enrollment_inversion": ("enrollment", "inversion"),
         "delta_1view": ("enrollment_1view", "enrollment")}
DIGITS = {"psnr": 2, "ssim": 3, "lpips": 3, "id": 3}
BETTER = {"psnr": 1, "ssim": 1, "lpips": -1, "id": 1}
#: Short names in the Δ rows and the winner column.
SHORT = {"inversion": "inversion", "baseline": "baseline", "enrollment": "enrollment",
         "enrollment_1view": "1 view"}


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def methods_in(fits: list[Fit]) -> list[str]:
    """The methods that have fits, in :data:`METHODS` order."""
    present = {f.method for f in fits}
    return [m for m in METHODS if m in present]


def pairs_in(methods: list[str]) -> dict[str, tuple[str, str]]:
    """The :data:`PAIRS` whose two methods both ran."""
    return {k: (a, b) for k, (a, b) in PAIRS.items() if a in methods and b in methods}


def summarize(fits: list[Fit]) -> dict[str, dict[str, dict[str, float]]]:
    """``{method | pair key: {"<split>/<score>": {"mean", "std", "n"}}}`` over identities.

    A pair's entry (:data:`PAIRS`; ``delta`` is inversion − baseline) is a − b per identity (paired),
    then mean ± std; only identities both methods scored on that split count.
    """
    table: dict[str, dict[str, dict[str, float]]] = {}
    by_key = {(f.method, f.identity): f for f in fits}
    methods = methods_in(fits)
    for method in methods:
        rows = [f for f in fits if f.method == method]
        table[method] = {f"{s}/{m}": _mean_std([r.metrics[s][m] for r in rows if m in r.metrics.get(s, {})])
                         for s in SPLITS for m in SCORES if any(m in r.metrics.get(s, {}) for r in rows)}
    identities = sorted({f.identity for f in fits})
    for key, (a, b) in pairs_in(methods).items():
        table[key] = {}
        for s in SPLITS:
            for m in SCORES:
                diffs = [by_key[a, i].metrics[s][m] - by_key[b, i].metrics[s][m] for i in identities
                         if all((meth, i) in by_key and m in by_key[meth, i].metrics.get(s, {}) for meth in (a, b))]
                if diffs:
                    table[key][f"{s}/{m}"] = _mean_std(diffs)
    return table


def _cell(stat: dict[str, float] | None, digits: int) -> str:
    return "—" if stat is None else f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def winner(delta: dict[str, float] | None, score: str, a: str = "inversion", b: str = "baseline") -> str:
    """Which of ``a`` / ``b`` a paired Δ (a − b) favours: the mean beyond one standard deviation, else "tie"."""
    if delta is None:
        return "—"
    if abs(delta["mean"]) <= delta["std"]:
        return "tie"
    return a if BETTER[score] * delta["mean"] > 0 else b


def _stop_note(fits: list[Fit], methods: list[str]) -> str:
    """Steps to each fit's own stop and its stop kinds, per method; the capped fits named."""
    parts = []
    for m in methods:
        rows = [f for f in fits if f.method == m]
        steps = _mean_std([float(f.steps) for f in rows])
        kinds = {k: sum(f.stop_kind == k for f in rows) for k in sorted({f.stop_kind for f in rows})}
        parts.append(f"{m} {steps['mean']:.0f} ± {steps['std']:.0f} ("
                     + ", ".join(f"{k} {n}/{len(rows)}" for k, n in kinds.items()) + ")")
    capped = [f"{f.method}/{f.identity} ({f.stop_kind}, {f.steps} steps)" for f in fits if f.capped]
    return ("Steps to each fit's own stop (stop kinds): " + ", ".join(parts) + ". "
            + (f"**Stopped by a cap, not converged: {', '.join(capped)}.**" if capped
               else "No fit reached its cap (every fit stopped on its own EMA plateau)."))


def markdown_table(fits: list[Fit], identities: list[int], settings: str = "") -> str:
    """The demo's result table: per split, each method's mean ± std over identities, then the paired Δs."""
    summary = summarize(fits)
    methods = methods_in(fits)
    head = ("| split | method | PSNR ↑ (dB) | SSIM ↑ | LPIPS ↓ | ID ↑ |\n"
            "|---|---|---|---|---|---|\n")
    lines = []
    for s in SPLITS:
        for method in methods:
            cells = [_cell(summary[method].get(f"{s}/{m}"), DIGITS[m]) for m in SCORES]
            lines.append(f"| {s} | {METHODS[method].label} | " + " | ".join(cells) + " |")
        for key, (a, b) in pairs_in(methods).items():
            deltas = [summary[key].get(f"{s}/{m}") for m in SCORES]
            cells = [f"{_cell(d, DIGITS[m])} ({winner(d, m, SHORT[a], SHORT[b])})"
                     for d, m in zip(deltas, SCORES, strict=True)]
            lines.append(f"| {s} | Δ {SHORT[a]} − {SHORT[b]} (winner) | " + " | ".join(cells) + " |")
    notes = [f"Held-out synthetic identities: {identities} (3 frontal-ish neutral inputs each); mean ± std over "
             "identities; head-region metrics (target mask); Δ is paired per identity; a winner needs |mean Δ| > std.",
             _stop_note(fits, methods)]
    if "enrollment_1view" in methods:
        notes.append("The 1-view enrollment fits the frontal input alone and is scored on the 3-view methods' "
                     "held-out images with their view buckets (same images, same angles to the 3 input cameras).")
    if settings:
        notes.append(settings)
    return head + "\n".join(lines) + "\n\n" + "\n\n".join(notes) + "\n"


def combine_seeds(dirs: list[Path]) -> str:
    """Markdown table over several demo runs (seeds): per split and score, each method's mean over
    runs of its per-run mean over identities (± std over runs), and each pair's per-run mean Δ listed."""
    runs = [json.loads((Path(d) / "results.json").read_text())["summary"] for d in dirs]
    methods = [m for m in METHODS if all(m in r for r in runs)]
    pairs = {k: ab for k, ab in pairs_in(methods).items() if all(k in r for r in runs)}
    lines = ["| split | score | " + " | ".join(f"{m} (mean ± std over runs)" for m in methods) + " | "
             + " | ".join(f"Δ per run ({SHORT[a]} − {SHORT[b]})" for a, b in pairs.values()) + " |",
             "|---|---|" + "---|" * (len(methods) + len(pairs))]
    for split in SPLITS:
        for score in SCORES:
            key = f"{split}/{score}"
            if not all(key in r[m] for r in runs for m in methods):
                continue
            cells = [_cell(_mean_std([r[m][key]["mean"] for r in runs]), DIGITS[score]) for m in methods]
            cells += [", ".join(f"{r[p][key]['mean']:+.{DIGITS[score]}f}" for r in runs)
                      if all(key in r[p] for r in runs) else "—" for p in pairs]
            lines.append(f"| {split} | {score} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\nRuns: {', '.join(str(d) for d in dirs)}.\n"
