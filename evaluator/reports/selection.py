"""Which saved runs a view shows: `report --model/--exclude` patterns, and `forget` (a run taken out of every
ranking and view, its answers kept, until `forget --undo`)."""

from __future__ import annotations

import difflib
import shlex
from fnmatch import fnmatchcase
from pathlib import Path

import polars as pl
from rich.console import Console
from rich.markup import escape

from evaluator.errors import InputError


def close_names(name: str, names: list[str], limit: int = 5) -> str:
    """`name`'s close matches among `names` (case-blind), else the first few names, for a one-line error."""
    lowered = {n.lower(): n for n in names}
    close = [lowered[n] for n in difflib.get_close_matches(name.lower(), list(lowered), n=limit, cutoff=0.5)]
    close += [n for n in names if name.lower() in n.lower() and n not in close][:limit - len(close)]
    if close:
        return "close: " + ", ".join(close)
    return ("saved: " + ", ".join(sorted(names)[:limit]) + (", ..." if len(names) > limit else "")) if names \
        else "nothing is saved in this cache"


def _matches(pattern: str, name: str) -> bool:
    return fnmatchcase(name.lower(), pattern.lower())


def choose(runs: pl.DataFrame, include: list[str] | None, exclude: list[str] | None) -> pl.DataFrame:
    """The runs whose model matches one of `include` (globs, case-blind; all where none) and none of
    `exclude`; a pattern that matches no saved model is bad input, naming close ones."""
    names = sorted(set(runs["model"].to_list()))
    for flag, patterns in (("--model", include or []), ("--exclude", exclude or [])):
        for pattern in patterns:
            if not any(_matches(pattern, n) for n in names):
                raise InputError(f"'{pattern[:100]}' matches no model in the cache ({close_names(pattern, names)})",
                                 field=flag)
    kept = [n for n in names if (not include or any(_matches(p, n) for p in include))
            and not any(_matches(p, n) for p in exclude or [])]
    return runs.filter(pl.col("model").is_in(kept))


def _variant(variant: str | None) -> str:
    return "every variant" if variant is None else f"variant '{variant}'" if variant else "the official prompt"


def forget(folder: Path, model: str | None, variant: str | None, undo: bool, console: Console) -> None:
    """`forget`: take a model's runs out of every ranking and view, put them back (`undo`), or list what is
    forgotten (no model). Answers and scores stay in the cache."""
    from evaluator.cache.responses import ResponseCache

    if not (folder / "responses" / "responses.sqlite").is_file():
        raise InputError("no response cache here: nothing has been run with this --cache", path=folder)
    store = ResponseCache(folder / "responses")
    try:
        entries = store.forgotten()
        if model is None:
            if variant is not None or undo:
                raise InputError("name the model: forget [--undo] MODEL [--variant V]", field="MODEL")
            for name, which in entries:
                console.print(f"forgotten: {escape(name)} ({_variant(which)})", highlight=False)
            if not entries:
                console.print("nothing is forgotten: every saved run is in the rankings", highlight=False)
            return
        if undo:
            names = sorted({name for name, _ in entries})
            if model not in names:
                raise InputError(f"'{model[:100]}' is not forgotten ("
                                 + (f"forgotten: {', '.join(names[:6])}" if names else "nothing is") + ")")
            if not store.forget(model, variant, undo=True):
                raise InputError(f"'{model[:100]}' is not forgotten for {_variant(variant)} (it is for: "
                                 + ", ".join(_variant(v) for n, v in entries if n == model) + ")", field="--variant")
            console.print(f"'{escape(model)}' ({_variant(variant)}) is back in every ranking and view",
                          highlight=False)
            return
        runs = store.runs(forgotten=True)
        mine = runs.filter(pl.col("model") == model)
        if mine.is_empty():
            raise InputError(f"no saved run of model '{model[:100]}' "
                             f"({close_names(model, sorted(set(runs['model'].to_list())))})")
        variants = sorted(set(mine["variant"].to_list()))
        if variant is not None and variant not in variants:
            raise InputError(f"'{model[:100]}' has no run with variant '{variant[:100]}' (its variants: "
                             + ", ".join(repr(v) for v in variants) + ")", field="--variant")
        again = store.forget(model, variant)
        chosen = mine if variant is None else mine.filter(pl.col("variant") == variant)
        runs_said = "; ".join(f"{r['data'].rsplit('/', 1)[-1]} {r['protocol']}-wise"
                              + (f" {r['variant']}" if r["variant"] else "") for r in chosen.iter_rows(named=True))
        console.print(f"forgot '{escape(model)}' ({_variant(variant)}{', again' if again else ''}): "
                      f"{chosen.height} run(s) ({escape(runs_said)}) out of report, leaderboards, HTML reports, "
                      "analyze, compare and load_results; its answers and scores stay in the cache. Undo: "
                      f"shopping-mmlu forget --undo {escape(shlex.quote(model))}", highlight=False, soft_wrap=True)
    finally:
        store.close()


def forgotten_note(folder: Path) -> str | None:
    """One line naming what `forget` keeps out of the views, for the report (None when nothing is)."""
    from evaluator.cache.responses import ResponseCache

    if not (folder / "responses" / "responses.sqlite").is_file():
        return None
    store = ResponseCache(folder / "responses", read_only=True)
    try:
        entries = store.forgotten()
    finally:
        store.close()
    if not entries:
        return None
    names = sorted({name for name, _ in entries})
    return (f"not shown: {', '.join(names[:6])}{f' and {len(names) - 6} more' if len(names) > 6 else ''} "
            "(forgotten; `shopping-mmlu forget --undo MODEL` puts one back)")
