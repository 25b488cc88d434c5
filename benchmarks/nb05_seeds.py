"""The ranges notebook 05's text quotes "over ten seeds", measured with the notebook's own code.

The notebook runs one seed: pretraining under torch.manual_seed(0), every fine-tune under
torch.manual_seed(1). This script runs the same code for seeds s = 0 .. N-1 (pretraining under s,
fine-tunes under s + 1, so seed 0 is the notebook's own run) and prints, over the seeds, the range
of every figure the text quotes: the pretrained model's accuracy on upright digits and how often
it answers "4" on rotated ones; head only, LoRA r = 4 and full fine-tuning on the rotated digits,
and LoRA's margin over the head; LoRA r = 4 with lora_A drawn from N(0, 1) instead of
kaiming-uniform; and LoRA at every rank from 1 to 32 (α = 2r), beyond the ranks the notebook's
ablation runs.

It takes the code from the solution notebook itself (the given cells, the solutions of add_lora
and count_parameters, and the steps, learning rates and ranks its training cells use), so it
measures what the notebook runs and cannot drift from it. On one thread, as the notebook sets.

    python benchmarks/nb05_seeds.py               # ten seeds: about 15 minutes on a busy 2-core machine
    python benchmarks/nb05_seeds.py --seeds 3     # a quicker look
"""
from __future__ import annotations

import argparse
import copy
import os
import re
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "solutions" / "lora" / "05_lora_end_to_end.ipynb"
# The cells that define what the runs below use, by nbgrader grade_id; the data cell plots too,
# harmlessly, on matplotlib's Agg backend.
DEFINING = ["imports", "data", "lora_linear_given", "model_and_training_given", "add_lora_answer",
            "count_parameters_answer"]
ALL_RANKS = (1, 2, 4, 8, 16, 32)
# Seed by seed: where the text says one run beats another.
COMPARISONS = [*((f"LoRA r={rank}", "LoRA r=4") for rank in ALL_RANKS if rank != 4),
               ("LoRA r=32", "LoRA r=16"), ("LoRA r=4", "LoRA r=4, A ~ N(0, 1)"),
               ("full fine-tuning", "LoRA r=16"), ("LoRA r=4", "head only")]


def _cells(notebook) -> dict[str, str]:
    return {cell.metadata.get("nbgrader", {}).get("grade_id"): cell.source for cell in notebook.cells}


def _train_call(source: str, what: str) -> tuple[int, float]:
    """(steps, lr) of the `train(...)` call in a cell's source."""
    found = re.search(r"train\(.*?steps=(\d+), lr=([0-9.e-]+)\)", source)
    assert found, f"no train(..., steps=..., lr=...) call in the {what} cell"
    return int(found[1]), float(found[2])


def load_notebook_code() -> tuple[dict, dict]:
    """The notebook's namespace after its defining cells, and the settings its training cells use."""
    os.environ["MPLBACKEND"] = "Agg"
    cells = _cells(nbformat.read(NOTEBOOK, as_version=4))
    namespace: dict = {}
    for grade_id in DEFINING:
        exec(compile(cells[grade_id], f"<{grade_id}>", "exec"), namespace)
    ranks = re.search(r"for rank in \(([\d, ]+)\):", cells["rank_ablation"])
    assert ranks, "no `for rank in (...):` in the rank_ablation cell"
    settings = {"pretrain": _train_call(cells["pretrain"], "pretrain"),
                "fine_tune": _train_call(cells["fine_tune"], "fine_tune"),
                "notebook_ranks": tuple(sorted({4, *(int(r) for r in ranks[1].split(","))}))}
    return namespace, settings


def run_seed(ns: dict, settings: dict, seed: int, ranks=ALL_RANKS) -> tuple[dict, dict]:
    """Every figure for one seed, and the CPU seconds each kind of run took."""
    torch, nn = ns["torch"], ns["nn"]
    train, accuracy, add_lora = ns["train"], ns["accuracy"], ns["add_lora"]
    x_train, y_train, x_test, y_test = ns["x_train"], ns["y_train"], ns["x_test"], ns["y_test"]
    r_train, r_test = ns["r_train"], ns["r_test"]
    (pre_steps, pre_lr), (steps, lr) = settings["pretrain"], settings["fine_tune"]
    figures, cpu = {}, {}

    def timed(kind, make):
        start = time.process_time()
        model = make()
        cpu[kind] = cpu.get(kind, 0.0) + time.process_time() - start
        return model

    def fine_tune(model):
        return train(model, r_train, y_train, steps=steps, lr=lr)

    torch.manual_seed(seed)
    pretrained = timed("pretraining", lambda: train(ns["make_mlp"](), x_train, y_train, steps=pre_steps, lr=pre_lr))
    figures["upright"] = accuracy(pretrained, x_test, y_test)
    with torch.no_grad():
        figures["rotated answered 4"] = (pretrained(r_test).argmax(dim=1) == 4).double().mean().item()
    figures["rotated, not fine-tuned"] = accuracy(pretrained, r_test, y_test)

    torch.manual_seed(seed + 1)
    head = timed("head only", lambda: fine_tune(add_lora(copy.deepcopy(pretrained), targets=[], trainable=["4"])))
    figures["head only"] = accuracy(head, r_test, y_test)
    torch.manual_seed(seed + 1)
    full = timed("full", lambda: fine_tune(copy.deepcopy(pretrained)))
    figures["full fine-tuning"] = accuracy(full, r_test, y_test)
    for rank in ranks:
        torch.manual_seed(seed + 1)
        lora = timed(f"LoRA r={rank}", lambda: fine_tune(add_lora(copy.deepcopy(pretrained), targets=["0", "2"],
                                                                   rank=rank, alpha=2 * rank, trainable=["4"])))
        figures[f"LoRA r={rank}"] = accuracy(lora, r_test, y_test)
    figures["LoRA r=4 - head only"] = figures["LoRA r=4"] - figures["head only"]
    figures["full - LoRA r=4"] = figures["full fine-tuning"] - figures["LoRA r=4"]

    def normal_init():  # notebook 03's N(0, 1) for lora_A, everything else as above
        torch.manual_seed(seed + 1)
        model = add_lora(copy.deepcopy(pretrained), targets=["0", "2"], rank=4, alpha=8, trainable=["4"])
        for name in ("0", "2"):
            nn.init.normal_(model.get_submodule(name).lora_A.weight)
        return fine_tune(model)

    figures["LoRA r=4, A ~ N(0, 1)"] = accuracy(timed("LoRA r=4, N(0, 1)", normal_init), r_test, y_test)
    return figures, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    ns, settings = load_notebook_code()
    ns["torch"].set_num_threads(1)
    print(f"notebook: pretraining {settings['pretrain'][0]} steps at lr {settings['pretrain'][1]:g}, "
          f"fine-tunes {settings['fine_tune'][0]} steps at lr {settings['fine_tune'][1]:g}; "
          f"the ablation's ranks {settings['notebook_ranks']}")
    y_test = ns["y_test"]
    print(f"share of 4s among the test digits: {(y_test == 4).double().mean().item():.4f}")

    per_seed, cpu_total = [], {}
    for seed in range(args.seeds):
        figures, cpu = run_seed(ns, settings, seed)
        per_seed.append(figures)
        for kind, seconds in cpu.items():
            cpu_total[kind] = cpu_total.get(kind, 0.0) + seconds
        print(f"seed {seed}: " + ", ".join(f"{name} {value:.3f}" for name, value in figures.items()), flush=True)

    print(f"\nover {args.seeds} seeds (min–max, mean; seed 0 is the notebook's run):")
    for name in per_seed[0]:
        values = [figures[name] for figures in per_seed]
        print(f"  {name:<26}{min(values):.3f}–{max(values):.3f}   mean {sum(values) / len(values):.3f}"
              f"   seed 0: {values[0]:.3f}")
    for a, b in COMPARISONS:
        differences = [figures[a] - figures[b] for figures in per_seed]
        print(f"  {a} above {b}: on {sum(d > 0 for d in differences)} of {args.seeds} seeds, "
              f"tied on {sum(d == 0 for d in differences)}; by {min(differences):+.3f} to {max(differences):+.3f}")
    print("\nCPU per run, mean over the seeds:",
          ", ".join(f"{kind} {seconds / args.seeds:.2f} s" for kind, seconds in cpu_total.items()))


if __name__ == "__main__":
    main()
