"""What a suite will do (`--dry-run`: GPU plan, requests, tokens, cost) and what it did (outcomes)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from evaluator.data import loaders
from evaluator.prompts import PromptOptions, Protocol, Rendering, render
from evaluator.runs.suite import Outcome
from servers.planner import Gpu, plan_node
from servers.suite import Suite

CHARS_PER_TOKEN = 4.0  # a rough English average; the estimate says so


def request_estimates(suite: Suite) -> dict[tuple[str, bool], tuple[int, int, int]]:
    """(rendering, number_only) -> (requests, estimated input tokens, output-token ceiling), rendered once
    per combination rather than once per model."""
    questions = loaders.load(suite.data, suite.protocol).questions
    combos = {(suite.render or m.rendering, m.number_only) for m in suite.models}
    out = {}
    for rendering, number_only in combos:
        chars = ceiling = 0
        for q in questions:
            prompt = render(q, Protocol(suite.protocol), Rendering(rendering), PromptOptions(number_only=number_only))
            chars += len(prompt.prompt) if prompt.prompt is not None else sum(len(m["content"])
                                                                              for m in prompt.messages)
            ceiling += prompt.max_tokens
        out[(rendering, number_only)] = (len(questions), round(chars / CHARS_PER_TOKEN), ceiling)
    return out


def print_dry_run(suite: Suite, gpus: list[Gpu], console: Console) -> None:
    estimates = request_estimates(suite)
    local = [m for m in suite.models if m.is_local]
    requests_each = next(iter(estimates.values()))[0]
    plan = plan_node(local, gpus, requests_each) if gpus else None
    placements = {p.profile.name: p for p in plan.placements} if plan else {}
    failing = {p.profile.name: p for p in plan.unplaceable} if plan else {}
    order = {name: i + 1 for i, name in enumerate(placements)}
    title = (f"Suite '{suite.name}': {len(suite.models)} models, {suite.protocol}-wise, data {suite.data}; "
             + (f"{len(gpus)} GPU(s) × {gpus[0].memory_gib:.0f} GiB" if gpus else "no GPU: local models on CPU, "
                "one after another"))
    table = Table(title=title)
    for column in ("#", "model", "params", "memory", "TP", "GPUs", "start", "requests", "in tok", "out tok≤",
                   "cost≤"):
        table.add_column(column, justify="left" if column in ("model", "GPUs") else "right",
                         no_wrap=column == "model")
    total_cost = 0.0
    for model in suite.models:
        rendering = suite.render or model.rendering
        n, tokens_in, tokens_out = estimates[(rendering, model.number_only)]
        cost = "-"
        if model.price_input is not None and model.price_output is not None:
            value = tokens_in / 1e6 * model.price_input + tokens_out / 1e6 * model.price_output
            total_cost += value
            cost = f"${value:,.2f}"
        if model.is_local:
            placed, unplaced = placements.get(model.name), failing.get(model.name)
            if placed:
                row = [str(order[model.name]), f"{placed.memory_gib:.0f}G", str(placed.tp),
                       ",".join(map(str, placed.gpus)), f"{placed.start_s / 60:.0f}m"]
            elif unplaced:
                row = ["-", f"{unplaced.memory_gib:.0f}G", "-", "no fit", "-"]
            else:
                row = ["-", "-", "-", "CPU", "-"]
        else:
            row = ["-", "-", "-", model.provider, "now"]
        params = f"{model.params_b:g}B" if model.params_b else "-"
        table.add_row(row[0], model.name, params, row[1], row[2], row[3], row[4], f"{n:,}", _short(tokens_in),
                      _short(tokens_out), cost)
    console.print(table)
    if plan is not None:
        console.print(f"Estimated wall time {plan.wall_s / 3600:.2f} h for the local models "
                      f"(one after another: {plan.sequential_s / 3600:.2f} h); GPU busy {plan.gpu_busy_fraction:.0%}")
    console.print(f"API cost ceiling: ${total_cost:,.2f} (input tokens estimated at {CHARS_PER_TOKEN:g} characters "
                  "each; output at the token budgets). Nothing was sent.")


def _short(count: int) -> str:
    return f"{count / 1e6:.1f}M" if count >= 1e6 else f"{count / 1e3:.0f}k" if count >= 1e4 else f"{count:,}"


def print_outcomes(outcomes: list[Outcome], console: Console) -> None:
    table = Table(title="Suite results")
    for column in ("model", "status", "overall", "sent", "cached", "errors", "note"):
        table.add_column(column, justify="right" if column in ("overall", "sent", "cached", "errors") else "left")
    for o in outcomes:
        table.add_row(o.model, o.status, "-" if o.overall is None else f"{o.overall:.4f}", str(o.sent),
                      str(o.cached), str(o.errors), o.message.splitlines()[-1][:80] if o.message else "")
    console.print(table)
