"""What a suite will do (`--dry-run`: GPU plan, requests, tokens, cost) and what it did (outcomes), at 80
columns."""

from __future__ import annotations

import itertools

from rich.console import Console
from rich.markup import escape
from rich.table import Table, box

from evaluator.runs.suite import Outcome, request_estimates
from servers.model_config import model_shape
from servers.planner import NIGHT_S, Gpu, estimated_cpu_s, plan_node
from servers.suite import Suite

CHARS_PER_TOKEN = 4.0


def _short(count: int) -> str:
    return f"{count / 1e6:.1f}M" if count >= 1e6 else f"{count / 1e3:.0f}k" if count >= 1e4 else f"{count:,}"


def plan_records(suite: Suite, gpus: list[Gpu]) -> list[dict]:
    """The plan as data (`suite --dry-run --json`): per model its id, provider, size, dtype, parallel sizes,
    GPUs and node, the memory reserved in all, the context it is started with and that context's KV cache."""
    from servers.model_config import BATCH_ROOM, model_shape
    from servers.planner import DTYPE_BYTES, GIB

    estimates = request_estimates(suite, CHARS_PER_TOKEN)
    requests_each = next(iter(estimates.values()))[0]
    local = [m for m in suite.models if m.is_local]
    plan = plan_node(local, gpus, requests_each) if gpus and local else None
    placed = {p.profile.name: p for p in (plan.placements + plan.unplaceable if plan else [])}
    node_of = {g.index: g.node for g in gpus}
    out = []
    for model in suite.models:
        record = {"name": model.name, "model": model.model, "provider": model.provider, "params_b": model.params_b,
                  "dtype": model.dtype, "tp": None, "pp": model.pipeline_parallel_size, "gpus": [], "node": None,
                  "memory_gib": None, "max_model_len": model.max_model_len, "kv_cache_gib": None,
                  "kv_shape_from": None, "planned_start_s": None, "placed": None,
                  "written_as": suite.written_as.get(model.name), "from_profile": suite.inherited.get(model.name),
                  "size_from": suite.sizes.get(model.name)}
        if model.is_local:
            shape = model_shape(model)
            place = placed.get(model.name)
            if shape is not None:
                tokens = max(BATCH_ROOM, min(model.max_model_len or shape.context, shape.context))
                record["kv_cache_gib"] = round(shape.kv_bytes_per_token(DTYPE_BYTES.get(model.dtype, 2)) * tokens
                                               / GIB, 2)
                record["kv_shape_from"] = shape.source
            if place is not None:
                record.update(tp=place.tp, gpus=place.gpus, memory_gib=round(place.memory_gib, 2),
                              node=node_of.get(place.gpus[0]) if place.gpus else None,
                              planned_start_s=round(place.start_s, 1) if place.gpus else None,
                              placed=bool(place.gpus))
        out.append(record)
    return out


def print_dry_run(suite: Suite, gpus: list[Gpu], console: Console) -> None:
    estimates = request_estimates(suite, CHARS_PER_TOKEN)
    local = [m for m in suite.models if m.is_local]
    requests_each = next(iter(estimates.values()))[0]
    plan = plan_node(local, gpus, requests_each) if gpus else None
    placements = {p.profile.name: p for p in plan.placements} if plan else {}
    failing = {p.profile.name: p for p in plan.unplaceable} if plan else {}
    order = {name: i + 1 for i, name in enumerate(placements)}
    nodes = len({g.node for g in gpus})
    where = ((f"{nodes} nodes × " if nodes > 1 else "") + f"{len(gpus) // max(nodes, 1)} GPU(s) × "
             f"{gpus[0].memory_gib:.0f} GiB; " if gpus else "no GPU: local models on CPU, one after another; "
             if local else "")
    console.print(f"Suite '{escape(suite.name)}': {len(suite.models)} models, {suite.protocol}-wise, "
                  f"{requests_each:,} requests each; {where}data {escape(str(suite.data))}", highlight=False)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=0)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("model", overflow="fold", ratio=1, min_width=10)
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("ctx", justify="right", no_wrap=True)
    table.add_column("GPUs", no_wrap=True)
    table.add_column("start", justify="right", no_wrap=True)
    table.add_column("tok in/out≤", justify="right", no_wrap=True)
    table.add_column("cost≤", justify="right", no_wrap=True)
    total_cost = 0.0
    unknown: list[str] = []
    unpriced = [m.name for m in suite.models if not m.is_local and m.prices() is None and not self_hosted(m)]
    for model in suite.models:
        requests, tokens_in, tokens_out = estimates[model.name]
        tokens_out += requests * model.reasoning_budget if model.reasoning else 0  # thinking is billed as output
        cost = "-"
        prices = model.prices(batch=model.batch)
        if prices is not None:
            value = tokens_in / 1e6 * prices[0] + tokens_out / 1e6 * prices[1]
            total_cost += value
            cost = f"${value:,.2f}" + (" b" if model.batch else "")
        params = f"{model.params_b:g}B" if model.params_b else "-"
        if model.is_local:
            placed, unplaced = placements.get(model.name), failing.get(model.name)
            if placed:
                row = [str(order[model.name]), f"{params} {placed.memory_gib:.0f}G",
                       _gpus(placed.gpus, gpus, nodes > 1), f"{placed.start_s / 60:.0f}m"]
            elif unplaced:
                row = ["-", f"{params} {unplaced.memory_gib:.0f}G", "no fit", "-"]
            else:
                cpu_s = estimated_cpu_s(model, tokens_in, tokens_out)
                row = ["-", params, "CPU" + (f" ~{_hours(cpu_s)}" if cpu_s else " ?"), "-"]
        else:
            row = ["-", params, model.provider + (" batch" if model.batch else ""), "now"]
        if model.is_local:
            unknown += [] if model_shape(model) else [model.name]
        context = (f"{model.max_model_len / 1024:.0f}k" if model.max_model_len else "?") if model.is_local else "-"
        row.insert(2, context)
        table.add_row(row[0], escape(model.name), row[1], row[2], row[3], row[4],
                      f"{_short(tokens_in)}/{_short(tokens_out)}", cost)
    console.print(table)
    print_origins(suite, console)
    if unknown and plan is not None:  # without GPUs nothing is reserved: the KV cache plans nothing
        console.print(f"KV cache unknown for {len(unknown)} local model(s) ({escape(', '.join(unknown[:4]))}"
                      f"{', ...' if len(unknown) > 4 else ''}): planned with 2 GiB of KV and their own context "
                      "(ctx ?); put their config.json in the Hugging Face cache, or state num_layers, "
                      "num_kv_heads, head_dim and context_len in the profile.", highlight=False)
    if local and not gpus:
        _cpu_note(local, estimates, console)
    if plan is not None:
        console.print(f"Estimated wall time {plan.wall_s / 3600:.2f} h for the local models (one after another: "
                      f"{plan.sequential_s / 3600:.2f} h); GPU busy {plan.gpu_busy_fraction:.0%}", highlight=False)
    missing = (f" + unknown for {len(unpriced)} API model(s) without prices in their profile "
               f"({escape(', '.join(unpriced[:4]))}{', ...' if len(unpriced) > 4 else ''})" if unpriced else "")
    console.print(f"API cost ceiling: ${total_cost:,.2f}{missing} (b: at the batch rate; input tokens estimated at "
                  f"{CHARS_PER_TOKEN:g} characters each; output at the token budgets). Nothing was sent.",
                  highlight=False)


def _value(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def print_origins(suite: Suite, console: Console) -> None:
    """Where each model's settings come from, so nothing is inherited unseen: per model, the settings taken
    from a built-in profile without being stated in the suite (and the hub id it was written as), and for a
    hub id without a profile, where its size comes from; one line for the sizes nobody knows."""
    lines = Table.grid(padding=(0, 1))
    lines.add_column(overflow="fold", max_width=30)
    lines.add_column(ratio=1)
    for model in suite.models:
        written = suite.written_as.get(model.name)
        name = escape(model.name) + (f" ({escape(written)})" if written else "")
        taken = suite.inherited.get(model.name)
        if taken:
            lines.add_row(f"  {name}", "from the built-in profile: "
                          + ", ".join(f"{k} {escape(_value(v))}" for k, v in taken.items()))
        elif written:
            lines.add_row(f"  {name}", "the built-in profile of that hub id, as it is")
        if model.name in suite.sizes and model.params_b is not None:
            lines.add_row(f"  {name}", f"no profile: a local vLLM model of that hub id; {model.params_b:g}B from "
                          f"{escape(suite.sizes[model.name])}")
    if lines.row_count:
        console.print("Settings not stated in the suite:", highlight=False)
        console.print(lines, highlight=False)
    unknown = [m.name for m in suite.models if m.name in suite.sizes and m.params_b is None]
    if unknown:
        console.print(f"Size unknown for {len(unknown)} model(s) ({escape(', '.join(unknown[:4]))}"
                      f"{', ...' if len(unknown) > 4 else ''}): planned as 7B; state params_b in the entry "
                      f"({escape(suite.sizes[unknown[0]].removeprefix('size unknown: '))}).", highlight=False)


def _hours(seconds: float) -> str:
    return f"{seconds / 60:.0f}m" if seconds < 3600 else f"{seconds / 3600:,.{1 if seconds < 36_000 else 0}f}h"


def _cpu_note(local: list, estimates: dict, console: Console) -> None:
    """No GPU: each local model's rough vLLM-CPU time (the table's CPU ~Nh), their sum, and a warning
    naming the models that would not finish in a night."""
    times = {m.name: estimated_cpu_s(m, *estimates[m.name][1:]) for m in local}
    known = {name: s for name, s in times.items() if s is not None}
    unknown = sorted(set(times) - set(known))
    console.print(f"No GPU: the {len(local)} local model(s) run one after another on vLLM-CPU, about "
                  f"{_hours(sum(known.values()))} in all" + (f" ({len(unknown)} of unknown size: "
                                                            f"{escape(', '.join(unknown[:4]))}"
                                                            f"{', ...' if len(unknown) > 4 else ''})"
                                                            if unknown else "")
                  + ". A rough estimate: SmolLM2-135M as measured on 2 CPU cores (10.5 req/s at 64 in flight), "
                  "scaled by parameters and tokens.", highlight=False)
    alone = [f"{escape(name)} ~{_hours(s)}" for name, s in sorted(known.items(), key=lambda kv: -kv[1])
             if s > NIGHT_S]
    ends = list(itertools.accumulate(known.values()))
    after = [name for name, end in zip(known, ends) if end > NIGHT_S]
    if alone or after:
        night = f"{NIGHT_S / 3600:.0f} h"
        console.print("[yellow]warning:[/] on vLLM-CPU, " + "; ".join(
            ([f"{len(alone)} model(s) take more than a night ({night}) alone: {', '.join(alone[:6])}"
              + (f" and {len(alone) - 6} more" if len(alone) > 6 else "")] if alone else [])
            + ([f"one after another, {len(after)} of {len(known)} end past {night} (from "
                f"{escape(after[0])} on)"] if after else []))
            + ". Give them a GPU (--gpus, --ray) or an endpoint of their own (api_base).", highlight=False)


def self_hosted(model) -> bool:
    """An OpenAI-compatible endpoint on this machine or its network (loopback, a private or link-local
    address, a bare host name, .local/.internal/.lan): a server of one's own, with no price to state."""
    import ipaddress
    from urllib.parse import urlsplit

    if model.provider != "openai-compatible" or not model.api_base:
        return False
    try:
        host = (urlsplit(model.api_base).hostname or "").lower()
    except ValueError:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return bool(host) and ("." not in host or host.endswith((".local", ".internal", ".lan", ".localhost")))
    return address.is_loopback or address.is_private or address.is_link_local


def _gpus(ids: list[int], gpus: list[Gpu], show_nodes: bool) -> str:
    """GPU indices (0-3), with the node where a cluster is planned (n1:0-7, or n0-1 for whole nodes)."""
    node_of = {g.index: g.node for g in gpus}
    by_node: dict[int, list[int]] = {}
    for i in ids:
        by_node.setdefault(node_of.get(i, 0), []).append(i)

    def span(values: list[int]) -> str:
        if len(values) > 2 and values == list(range(values[0], values[-1] + 1)):
            return f"{values[0]}-{values[-1]}"
        return ",".join(map(str, values))

    if not show_nodes:
        return span(ids)
    width = max(sum(1 for g in gpus if g.node == n) for n in by_node)
    if len(by_node) > 1:
        return f"n{span(sorted(by_node))} all"
    node, local = next(iter(by_node.items()))
    return f"n{node}:{span([i - node * width for i in local])}"


def print_outcomes(outcomes: list[Outcome], console: Console) -> None:
    table = Table(title="Suite results", box=box.SIMPLE_HEAD, pad_edge=False, padding=0, title_justify="left")
    table.add_column("model", overflow="fold", ratio=1, min_width=10)
    table.add_column("status", no_wrap=True)
    table.add_column("overall", justify="right", no_wrap=True)
    table.add_column("answered", justify="right", no_wrap=True)
    table.add_column("sent", justify="right", no_wrap=True)
    table.add_column("took", justify="right", no_wrap=True)
    notes: dict[str, list[str]] = {}  # a reason, said once, with every model it concerns
    for o in outcomes:
        table.add_row(escape(o.model), o.status, "-" if o.overall is None else f"{o.overall:.3f}",
                      f"{o.questions - o.errors:,}/{o.questions:,}", f"{o.sent:,}", _duration(o.wall_s))
        if o.message:
            notes.setdefault(o.message.strip().splitlines()[0], []).append(o.model)  # whole: wrapped at spaces
    console.print(table)
    for message, models in notes.items():
        who = ", ".join(models[:6]) + (f" and {len(models) - 6} more" if len(models) > 6 else "")
        console.print(f"{escape(who)}: {escape(message)}", highlight=False)


def _duration(seconds: float) -> str:
    if seconds <= 0:
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
