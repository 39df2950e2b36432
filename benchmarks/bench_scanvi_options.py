"""scANVI's options, one at a time: accuracy and macro F1 next to the kNN vote on the same latent.

cellvi only, in this process (an accuracy comparison, not a timing). For each dataset of
``bench_scanvi.py`` (same cells, genes and 10 % label mask), scVI is trained once (seed 0,
``--scvi-epochs``); then scANVI is trained from that same scVI model with cellvi's defaults and
with each option of ``--options`` changed on its own, for every seed of ``--seeds``. Scored on
the cells whose label was hidden, with the 15-NN vote on the labelled cells of the scVI latent
as the baseline the predictions should not lose to. Writes a JSON and a figure (accuracy and
macro F1 of every option and seed against the kNN vote), by default to
``docs/_static/scanvi_options.png``.

It measures the defaults; it is not a search. Never run on the holdout data.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _scanvi_in_process import parse, parser, run_datasets, write_json  # noqa: E402
from bench_scanvi import (  # noqa: E402
    LABELS_KEY,
    UNLABELED,
    classification_scores,
    knn_transfer,
    prepare_dataset,
)
from bench_scvi_speed import REPO_ROOT  # noqa: E402

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "scanvi_options.json"
DEFAULT_FIGURE = REPO_ROOT / "docs" / "_static" / "scanvi_options.png"
# name -> the keyword arguments of cv.tl.scanvi_train that differ from the defaults
OPTIONS = {
    "default": {},
    "no classifier pre-fit (scvi-tools)": {"n_steps_classifier_prefit": 0},
    "classifier pre-fit 50 steps": {"n_steps_classifier_prefit": 50},
    "classifier pre-fit 1000 steps": {"n_steps_classifier_prefit": 1000},
    "max_epochs=30": {"max_epochs": 30},
    "linear_classifier": {"linear_classifier": True},
    "label_prior=frequency": {"label_prior": "frequency"},
    "classification_ratio=20": {"classification_ratio": 20.0},
    "classification_ratio=150": {"classification_ratio": 150.0},
    "balance_labels": {"balance_labels": True},
}


def parse_args(argv=None) -> argparse.Namespace:
    p = parser(__doc__.split("\n\n")[0], seeds=[0, 1, 2], output=DEFAULT_OUTPUT)
    p.add_argument("--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS))
    p.add_argument("--figure", type=Path, default=DEFAULT_FIGURE)
    return parse(p, argv)


def run_dataset(name: str, args, workdir: Path) -> dict:
    import anndata as ad
    import numpy as np

    import cellvi as cv

    data = prepare_dataset(name, args, workdir)
    given, truth = data["given"], data["truth"]
    adata = ad.read_h5ad(data["file"])
    batch = "batch" if "batch" in adata.obs else None
    cv.pp.setup_registry(adata, layer=None, batch_key=batch, labels_key=LABELS_KEY)
    cv.tl.scvi_train(adata, max_epochs=args.scvi_epochs, seed=0)
    latent = np.asarray(adata.obsm["X_scvi"])
    knn, _ = knn_transfer(latent[given], truth[given], latent[~given])
    out = {"info": data["info"], "knn": classification_scores(truth[~given], knn), "runs": []}
    print(f"{name} 15-NN: accuracy {out['knn']['accuracy']:.3f}, macro F1 "
          f"{out['knn']['macro_f1']:.3f}", flush=True)  # fmt: skip
    for option in args.options:
        for seed in args.seeds:
            run = adata.copy()
            cv.tl.scanvi_train(run, unlabeled_category=UNLABELED, seed=seed, **OPTIONS[option])
            predicted = run.obs["scanvi_prediction"].astype(str).to_numpy()[~given]
            scores = classification_scores(truth[~given], predicted)
            out["runs"].append({"option": option, "seed": seed, **scores})
            print(f"{name} {option} seed {seed}: accuracy {scores['accuracy']:.3f}, macro F1 "
                  f"{scores['macro_f1']:.3f}", flush=True)  # fmt: skip
    return out


def summary(result: dict) -> dict:
    import numpy as np

    table = {}
    for option in dict.fromkeys(r["option"] for r in result["runs"]):
        runs = [r for r in result["runs"] if r["option"] == option]
        table[option] = {
            metric: float(np.mean([r[metric] for r in runs])) for metric in ("accuracy", "macro_f1")
        }
    return table


def figure(results: dict, path: Path) -> None:
    """Accuracy and macro F1 of every option (a dot per seed, a bar at the mean) against the
    kNN vote on the scVI latent (dashed), one row per dataset."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    options = list(dict.fromkeys(r["option"] for res in results.values() for r in res["runs"]))
    fig, axes = plt.subplots(len(names), 2, figsize=(10, 0.42 * len(options) * len(names) + 1.2),
                             layout="constrained", squeeze=False)  # fmt: skip
    y = np.arange(len(options))[::-1]
    for row, name in zip(axes, names, strict=True):
        result = results[name]
        for ax, metric, label in zip(row, ("accuracy", "macro_f1"), ("accuracy", "macro F1"), strict=True):  # fmt: skip
            for yi, option in zip(y, options, strict=True):
                values = [r[metric] for r in result["runs"] if r["option"] == option]
                ax.scatter(values, [yi] * len(values), color="C0", s=18, zorder=3)
                ax.plot([np.mean(values)] * 2, [yi - 0.3, yi + 0.3], color="C3", lw=2)
            ax.axvline(result["knn"][metric], color="0.4", ls="--", lw=1,
                       label=f"15-NN on the scVI latent ({result['knn'][metric]:.3f})")  # fmt: skip
            ax.set_yticks(y, options if ax is row[0] else [""] * len(options))
            ax.set(xlabel=f"{label} on the hidden cells (dots: seeds, bar: mean)",
                   title=f"{name}: {label}")  # fmt: skip
            ax.legend(frameon=False, fontsize="small", loc="best")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def main(argv=None) -> int:
    args = parse_args(argv)
    results = run_datasets(args, run_dataset, "bench_scanvi_options_")
    for name, result in results.items():
        knn = result["knn"]
        print(f"\n{name}: mean of seeds {args.seeds}; 15-NN accuracy {knn['accuracy']:.3f}, "
              f"macro F1 {knn['macro_f1']:.3f}")  # fmt: skip
        for option, row in summary(result).items():
            print(f"  {option:26s} accuracy {row['accuracy']:.3f}  macro F1 {row['macro_f1']:.3f}")
    write_json(args, results, {k: summary(v) for k, v in results.items()})
    figure(results, args.figure)
    print(f"results: {args.output}\nfigure: {args.figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
