"""Share trained models: Hugging Face-style model folders and the Hub (``cv.hub``).

>>> cv.hub.save(adata, "my_model")  # model.safetensors + config.json + README.md
>>> cv.hub.load("my_model", new_adata)  # -> new_adata.uns["scvi"]
>>> cv.hub.push(adata, "org/my-model")
>>> cv.hub.pull("org/my-model", new_adata)
"""

from .lifecycle.hub import load, pull, push, save

__all__ = ["load", "pull", "push", "save"]
