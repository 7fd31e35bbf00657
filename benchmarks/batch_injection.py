"""Batch injection, one-hot vs column lookup: ``python -m benchmarks.batch_injection [--write]``.

scvi-tools' training step (its ``TrainingPlan``'s loss, backward, Adam step; plan=czi) of
``model=czi_128`` at ``--genes`` genes (8,000, CZI's), batch ``--batch-size`` (1,024), with
``--categories`` batch categories (20, the demo's; 11,108, the Census's) and each
``trainer.batch_injection`` (sweep.model.batch_injection): four models, one per setting, built
and trained in this one process. The settings take turns: every round runs ``--steps`` steps of
each, in the order one_hot/lookup x categories, reversed every other round so that a drift of the
machine's speed falls on all of them alike. Per setting: the median step (ms) over the rounds'
medians and their spread (min-max), split into forward (loss), backward and optimizer
(``zero_grad`` + Adam); per implementation, the ratio of its most to its fewest categories, both
as the ratio of the medians and as the median (min-max) of the rounds' own ratios. A last table
times each part of the work that grows with the categories alone (:func:`category_costs`).
``--write`` puts the tables into docs/benchmarks.md (section
``batch_injection:<device>-<threads>t``).

``benchmarks.gpu`` runs :func:`alternate` on a GPU (``device="cuda"``) for the same comparison.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from dataclasses import dataclass, field

from benchmarks.record import machine, write_section
from sweep.model.batch_injection import LOOKUP, ONE_HOT

MODULE = "benchmarks.batch_injection"
CATEGORIES = (20, 11108)
IMPLEMENTATIONS = (ONE_HOT, LOOKUP)
PHASES = ("forward", "backward", "optimizer")


@dataclass
class Setting:
    """One model under test: its implementation, batch categories, one training step
    (``step(batch) -> seconds per phase``), its batches, and the rounds' median times (s)."""

    implementation: str
    categories: int
    step: object
    batches: list
    rounds: dict = field(default_factory=lambda: {p: [] for p in ("step", *PHASES)})

    @property
    def name(self) -> str:
        return f"{self.implementation}, {self.categories:,} categories"


@functools.cache
def _configs():
    """The composed ``model=czi_128`` and ``plan`` (czi) configs."""
    from sweep.config.schema import compose_train

    cfg = compose_train(["model=czi_128"])
    return cfg.model, cfg.plan


def _batches(genes: int, categories: int, batch_size: int, device: str, n: int) -> list[dict]:
    """``n`` batches of dense counts (cells, genes) float32, about 16% non-zero (1,000-1,500
    genes a cell at 8,000), and batch codes (cells, 1) int64 drawn uniformly; the counts are the
    same at every category count (seeded)."""
    import torch
    from scvi import REGISTRY_KEYS

    generator = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        mask = torch.rand(batch_size, genes, generator=generator) < 0.16
        counts = torch.poisson(torch.full((batch_size, genes), 2.0), generator=generator) + 1
        codes = torch.randint(0, categories, (batch_size, 1), generator=generator)
        batch = {
            REGISTRY_KEYS.X_KEY: counts * mask,
            REGISTRY_KEYS.BATCH_KEY: codes,
            REGISTRY_KEYS.LABELS_KEY: torch.zeros(batch_size, 1),
        }
        out.append({k: v.to(device) for k, v in batch.items()})
    return out


def make_setting(
    implementation: str,
    categories: int,
    genes: int,
    batch_size: int,
    device: str = "cpu",
    precision: str = "32-true",
    n_batches: int = 4,
    fused_adam: bool = False,
) -> Setting:
    """czi_128 on ``genes`` genes and ``categories`` batch categories with ``implementation``,
    its plan=czi ``TrainingPlan`` and Adam on ``device`` (torch's fused Adam, the same
    settings, with ``fused_adam``), and ``n_batches`` batches."""
    import scvi
    import torch
    from omegaconf import OmegaConf
    from scvi.train import TrainingPlan

    from sweep.model.build import build_scvi

    model_cfg, plan_cfg = _configs()
    scvi.settings.seed = 0
    model = build_scvi(
        [f"g{i}" for i in range(genes)],
        [f"b{i}" for i in range(categories)],
        {},
        model_cfg,
        batch_injection=implementation,
    )
    plan = TrainingPlan(model.module, **OmegaConf.to_container(plan_cfg))
    plan.to(device)
    plan.train()
    optimizer = plan.configure_optimizers()["optimizer"]
    if fused_adam:
        settings = {k: optimizer.defaults[k] for k in ("lr", "eps", "weight_decay")}
        optimizer = torch.optim.Adam(model.module.parameters(), fused=True, **settings)
    bf16 = precision.startswith("bf16")

    def synchronise() -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def step(batch: dict) -> tuple[float, float, float]:
        """As TrainingPlan.training_step under Lightning's automatic optimisation; the
        seconds of forward, backward and optimizer."""
        start = synchronise()
        if "kl_weight" in plan.loss_kwargs:
            plan.loss_kwargs["kl_weight"] = plan.kl_weight
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            _, _, loss = plan.forward(batch, loss_kwargs=plan.loss_kwargs)
        forward = synchronise()
        loss.loss.backward()
        backward = synchronise()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        end = synchronise()
        return forward - start, backward - forward, end - backward

    batches = _batches(genes, categories, batch_size, device, n_batches)
    return Setting(implementation, categories, step, batches)


def alternate(settings: list[Setting], rounds: int, steps: int, warmup: int) -> None:
    """``warmup`` untimed steps of each setting, then ``rounds`` rounds of ``steps`` steps of
    each in turn (the order reversed every other round); each round's median step and phase
    times go to ``setting.rounds`` (s)."""
    for setting in settings:
        for i in range(warmup):
            setting.step(setting.batches[i % len(setting.batches)])
    for r in range(rounds):
        for setting in settings if r % 2 == 0 else settings[::-1]:
            times = [setting.step(setting.batches[i % len(setting.batches)]) for i in range(steps)]
            for phase, values in zip(PHASES, zip(*times, strict=True), strict=True):
                setting.rounds[phase].append(statistics.median(values))
            setting.rounds["step"].append(statistics.median(sum(t) for t in times))


def summary(settings: list[Setting]) -> list[dict]:
    """Per setting: median step and phases (ms), the spread of the step over rounds, and the
    ratio to the same implementation's fewest categories (of medians; rounds' median, min,
    max)."""
    fewest = {
        i: min((s for s in settings if s.implementation == i), key=lambda s: s.categories)
        for i in {s.implementation for s in settings}
    }
    rows = []
    for s in settings:
        base = fewest[s.implementation]
        paired = [a / b for a, b in zip(s.rounds["step"], base.rounds["step"], strict=True)]
        rows.append(
            {
                "implementation": s.implementation,
                "categories": s.categories,
                "ms": 1e3 * statistics.median(s.rounds["step"]),
                "ms_min": 1e3 * min(s.rounds["step"]),
                "ms_max": 1e3 * max(s.rounds["step"]),
                **{f"{p}_ms": 1e3 * statistics.median(s.rounds[p]) for p in PHASES},
                "ratio": statistics.median(s.rounds["step"])
                / statistics.median(base.rounds["step"]),
                "paired": (statistics.median(paired), min(paired), max(paired)),
                "rounds": len(s.rounds["step"]),
            }
        )
    return rows


def category_costs(categories: int, batch_size: int, widths: tuple[int, ...], rounds: int) -> dict:
    """Median ms of the work that grows with ``categories``, each part alone, the parts taking
    turns for ``rounds`` rounds; for the decoder's layers (inputs ``widths`` wide, 128 outputs)
    and ``batch_size`` codes:

    - one_hot, cat, product: the one-hot path's one-hot, its concatenation with each layer's
      input, and the forward product of the one-hot columns (its backward has two more);
    - gather, gradient: the lookup's columns read in the forward pass, and its backward's
      weight-sized gradient (zero-filled, the cells' gradients added into their columns);
    - adam: one Adam step (plan=czi's settings) over the one-hot columns' weights, which both
      pay: a column's gradient is zero when its category is absent from the batch, but Adam's
      moments and the weight decay move every column; adam_fused: the same with torch's fused
      Adam (``--fused-adam``).
    """
    import torch

    _, plan_cfg = _configs()
    codes = torch.randint(0, categories, (batch_size,))
    inputs = [torch.randn(batch_size, w) for w in widths]
    weights = [torch.randn(128, w + categories) for w in widths]
    grad_out = torch.randn(batch_size, 128)
    one_hot = torch.nn.functional.one_hot(codes, categories)
    one_hot_float = one_hot.float()
    adam = {}
    for fused in (False, True):
        columns = [torch.randn(128, categories, requires_grad=True) for _ in widths]
        for w in columns:
            w.grad = torch.randn_like(w)
        settings = {"lr": plan_cfg.lr, "eps": plan_cfg.eps, "weight_decay": plan_cfg.weight_decay}
        adam[fused] = torch.optim.Adam(columns, fused=fused, **settings)

    def gradient() -> None:
        for x, w in zip(inputs, weights, strict=True):
            grad = torch.empty_like(w)
            grad[:, : x.shape[1]] = grad_out.t() @ x
            grad[:, x.shape[1] :] = 0
            grad.index_add_(1, codes + x.shape[1], grad_out.t())

    parts = {
        "one_hot": lambda: torch.nn.functional.one_hot(codes, categories),
        "cat": lambda: [torch.cat((x, one_hot), dim=-1) for x in inputs],
        "product": lambda: [one_hot_float @ w[:, -categories:].t() for w in weights],
        "gather": lambda: [w.t()[codes + x.shape[1]] for x, w in zip(inputs, weights, strict=True)],
        "gradient": gradient,
        "adam": adam[False].step,
        "adam_fused": adam[True].step,
    }
    times = {name: [] for name in parts}
    for _ in range(rounds + 1):  # the first round untimed
        for name, part in parts.items():
            start = time.perf_counter()
            part()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t[1:]) for name, t in times.items()}


def markdown(rows: list[dict], parts: dict, args: argparse.Namespace, command: str) -> str:
    """The section: what ran, the step table and ratios, what grows with the categories."""
    lines = [
        f"### Batch injection, {args.device}, {args.threads} torch "
        f"thread{'s' * (args.threads != 1)} ({time.strftime('%Y-%m-%d')})",
        "",
        f"- machine: {machine()}; shared with other work while it ran",
        f"- model=czi_128, plan=czi (Adam), {args.genes:,} genes, batch {args.batch_size:,}, "
        f"fp32, {args.threads} torch thread{'s' * (args.threads != 1)}"
        f"{', fused Adam' if args.fused_adam else ''}; {args.rounds} rounds x "
        f"{args.steps} step{'s' * (args.steps != 1)} of each setting after {args.warmup} "
        "untimed, alternated in one process (order reversed every other round)",
        f"- command: `{command}`",
        "",
        "| batch injection | categories | ms/step, median | spread (rounds' min-max) "
        "| forward | backward | optimizer | / fewest categories "
        "| rounds' ratios, median (min-max) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        paired = r["paired"]
        lines.append(
            f"| {r['implementation']} | {r['categories']:,} | {r['ms']:,.0f} | "
            f"{r['ms_min']:,.0f}-{r['ms_max']:,.0f} | {r['forward_ms']:,.0f} | "
            f"{r['backward_ms']:,.0f} | {r['optimizer_ms']:,.0f} | {r['ratio']:.3f}x | "
            f"{paired[0]:.3f}x ({paired[1]:.3f}-{paired[2]:.3f}) |"
        )
    most = max(r["categories"] for r in rows)
    lines += [
        "",
        "Forward, backward and optimizer (`zero_grad` + Adam) are the medians of each phase; "
        "they need not add up to the step's median exactly.",
        "",
        f"What grows with the categories, each part timed alone at {most:,} categories "
        f"(median ms of {args.repeats}, the parts taking turns), for the 2 decoder layers "
        f"(inputs 50 and 128 wide, 128 outputs), {args.batch_size:,} cells:",
        "",
        "| what | who pays | ms |",
        "| --- | --- | ---: |",
        f"| one_hot of the codes (int64) | one_hot | {parts['one_hot']:.1f} |",
        f"| torch.cat of it with each layer's input | one_hot | {parts['cat']:.1f} |",
        f"| the one-hot columns' product, forward only | one_hot | {parts['product']:.1f} |",
        f"| the looked-up columns, forward | lookup | {parts['gather']:.1f} |",
        f"| the weight-sized gradient, zero-filled + columns added | lookup | "
        f"{parts['gradient']:.1f} |",
        f"| Adam step over the one-hot columns' weights (2 x 128 x {most:,}) | both | "
        f"{parts['adam']:.1f} |",
        f"| the same, torch's fused Adam (`--fused-adam`) | both | {parts['adam_fused']:.1f} |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n")[0])
    parser.add_argument("--genes", type=int, default=8000)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--categories", type=int, nargs="+", default=list(CATEGORIES))
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--steps", type=int, default=1, help="steps of a setting per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20, help="rounds of the parts' timings")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch's intra-op threads (default: torch's)")
    parser.add_argument("--fused-adam", action="store_true", help="torch's fused Adam instead")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()
    settings = [
        make_setting(
            implementation,
            categories,
            args.genes,
            args.batch_size,
            args.device,
            fused_adam=args.fused_adam,
        )
        for implementation in IMPLEMENTATIONS
        for categories in args.categories
    ]
    alternate(settings, args.rounds, args.steps, args.warmup)
    rows = summary(settings)
    parts = category_costs(max(args.categories), args.batch_size, (50, 128), args.repeats)
    text = markdown(rows, parts, args, " ".join(["python -m", MODULE, *argv]))
    print(text)
    if args.write:
        fused = "-fused-adam" if args.fused_adam else ""
        write_section(f"batch_injection:{args.device}-{args.threads}t{fused}", text)


if __name__ == "__main__":
    main()
