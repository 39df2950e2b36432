"""Share trained models: Hugging Face-style model folders and the Hub (``cv.hub``).

>>> cv.hub.save(adata, "my_model")  # model.safetensors + config.json + README.md
>>> cv.hub.load("my_model", new_adata)  # -> new_adata.uns["scvi"]
>>> cv.hub.push(adata, "org/my-model")
>>> cv.hub.pull("org/my-model", new_adata)
>>> cv.hub.save(adata, "my_model", include_data="minified")  # + adata.h5ad without counts
>>> reference = cv.hub.load_data("my_model")  # the reference cells, model in .uns["scvi"]
"""

from .lifecycle.hub import load, load_data, pull, pull_data, push, save

__all__ = ["load", "load_data", "pull", "pull_data", "push", "save"]
