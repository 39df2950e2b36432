"""Quick start: train scVI on the bundled 10x PBMC data, save the result and a UMAP.

Run from the repository root:  .venv/bin/python tutorials/quickstart.py [--max-epochs N]
Writes out/pbmc_10x_scvi.h5ad (data + registry + trained model) and out/pbmc_10x_scvi_umap.png.
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import scanpy as sc  # noqa: E402

import cellvi as cv  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-epochs", type=int, default=None, help="default: cellvi's rule")
    parser.add_argument("--out", type=Path, default=Path("out"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    adata = cv.datasets.pbmc_10x()  # 5,030 cells from 4 10x Genomics PBMC batches
    cv.pp.setup_registry(adata, layer="counts", batch_key="batch")
    cv.tl.scvi_train(adata, max_epochs=args.max_epochs)
    sc.pp.neighbors(adata, use_rep="X_scvi")
    sc.tl.umap(adata)

    h5ad = args.out / "pbmc_10x_scvi.h5ad"
    adata.write_h5ad(h5ad)
    fig = sc.pl.umap(adata, color=["batch", "cell_type"], wspace=0.35, show=False, return_fig=True)
    png = args.out / "pbmc_10x_scvi_umap.png"
    fig.savefig(png, dpi=120, bbox_inches="tight")

    back = sc.read_h5ad(h5ad)  # the model travels inside the file
    cv.tl.scvi_normalize(back)
    print(
        f"wrote {h5ad} and {png}; held-out ELBO per cell: "
        f"{back.uns['scvi']['metrics']['elbo_validation']:.1f}"
    )


if __name__ == "__main__":
    main()
