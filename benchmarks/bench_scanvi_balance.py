"""scANVI's ``balance_labels``: per-type F1 with and without a type-balanced labelled minibatch.

cellvi only, in this process (an accuracy comparison, not a timing): for each dataset of
``bench_scanvi.py`` (same cells, genes and 10 % label mask), scVI is trained once per seed,
then scANVI from it twice, with ``balance_labels=True`` (a companion minibatch of labelled
cells, every type equally likely) and ``balance_labels=False`` (cellvi's default since this
ablation: the classifier's loss on the labelled cells of each training minibatch). Scored on the cells whose label was hidden: accuracy, macro F1 and the
F1 of every type. Writes a JSON and a figure (per-type F1 against the number of labelled cells
of the type, both settings), by default to ``docs/_static/scanvi_balance_labels.png``.

Tuning nothing: the defaults are fixed, this measures one of them. Never run on the holdout data.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _scanvi_in_process import parse, parser, run_datasets, write_json  # noqa: E402
from bench_scanvi import LABELS_KEY, UNLABELED, prepare_dataset  # noqa: E402
from bench_scvi_speed import REPO_ROOT  # noqa: E402

DEFAULT_FIGURE = REPO_ROOT / "docs" / "_static" / "scanvi_balance_labels.png"
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "scanvi_balance.json"


def parse_args(argv=None) -> argparse.Namespace:
    p = parser(__doc__.split("\n\n")[0], seeds=[0, 1, 2], output=DEFAULT_OUTPUT)
    p.add_argument("--figure", type=Path, default=DEFAULT_FIGURE)
    return parse(p, argv)


def per_type_scores(truth, predicted) -> dict:
    import numpy as np
    from sklearn.metrics import f1_score

    classes = sorted(set(truth))
    f1 = f1_score(truth, predicted, labels=classes, average=None, zero_division=0)
    return {
        "accuracy": float(np.mean(truth == predicted)),
        "macro_f1": float(np.mean(f1)),
        "f1": dict(zip(classes, map(float, f1), strict=True)),
    }


def run_dataset(name: str, args, workdir: Path) -> dict:
    import anndata as ad

    import cellvi as cv

    data = prepare_dataset(name, args, workdir)
    hidden = ~data["given"]
    truth = data["truth"][hidden]
    out = {"info": data["info"], "runs": []}
    for seed in args.seeds:
        adata = ad.read_h5ad(data["file"])
        batch = "batch" if "batch" in adata.obs else None
        cv.pp.setup_registry(adata, layer=None, batch_key=batch, labels_key=LABELS_KEY)
        cv.tl.scvi_train(adata, max_epochs=args.scvi_epochs, seed=seed)
        for balance in (True, False):
            cv.tl.scanvi_train(adata, unlabeled_category=UNLABELED, balance_labels=balance,
                               seed=seed, key_added="scanvi")  # fmt: skip
            predicted = adata.obs["scanvi_prediction"].astype(str).to_numpy()[hidden]
            scores = per_type_scores(truth, predicted)
            out["runs"].append({"seed": seed, "balance_labels": balance, **scores})
            print(f"{name} seed {seed} balance_labels={balance}: accuracy "
                  f"{scores['accuracy']:.3f}, macro F1 {scores['macro_f1']:.3f}", flush=True)  # fmt: skip
    return out


def summary(result: dict) -> dict:
    import numpy as np

    table = {}
    for balance in (True, False):
        runs = [r for r in result["runs"] if r["balance_labels"] is balance]
        table[str(balance)] = {
            "accuracy_mean": float(np.mean([r["accuracy"] for r in runs])),
            "macro_f1_mean": float(np.mean([r["macro_f1"] for r in runs])),
            "f1_mean": {c: float(np.mean([r["f1"][c] for r in runs])) for c in runs[0]["f1"]},
        }
    return table


def _seeds(result: dict) -> str:
    k = len(result["runs"]) // 2
    return "one seed" if k == 1 else f"mean of {k} seeds"


def figure(results: dict, path: Path) -> None:
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 4), layout="constrained")
    axes = [axes] if len(results) == 1 else axes
    for ax, (name, result) in zip(axes, results.items(), strict=True):
        per_class = result["info"]["labelled_per_class"]
        table = summary(result)
        # types with hidden cells (a tiny --max-cells subsample may hide none of a type)
        scored = table["True"]["f1_mean"]
        classes = sorted((c for c in per_class if c in scored), key=lambda c: per_class[c]["n_labelled"])  # fmt: skip
        n = np.asarray([per_class[c]["n_labelled"] for c in classes])
        for balance, marker, label in ((True, "o", "balanced (balance_labels=True)"),
                                       (False, "x", "proportional (default, as scvi-tools)")):  # fmt: skip
            t = table[str(balance)]
            f1 = [t["f1_mean"][c] for c in classes]
            ax.scatter(n, f1, marker=marker, label=f"{label}: macro F1 {t['macro_f1_mean']:.3f}")
        ax.set_xscale("log")
        ax.set(xlabel="labelled cells of the type (log)", ylabel="F1 on its hidden cells",
               title=f"{name} ({len(classes)} types, {_seeds(result)})",
               ylim=(-0.02, 1.02))  # fmt: skip
        ax.legend(frameon=False, fontsize="small", loc="lower right")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def main(argv=None) -> int:
    args = parse_args(argv)
    results = run_datasets(args, run_dataset, "bench_scanvi_balance_")
    for name, result in results.items():
        for balance, row in summary(result).items():
            print(f"{name:16s} balance_labels={balance:5s} accuracy {row['accuracy_mean']:.3f} "
                  f"macro F1 {row['macro_f1_mean']:.3f}")  # fmt: skip
    write_json(args, results, {k: summary(v) for k, v in results.items()})
    figure(results, args.figure)
    print(f"results: {args.output}\nfigure: {args.figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
