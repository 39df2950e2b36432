"""Loading a model for a verb: the family's capability checked, and the embedding writer."""

from __future__ import annotations

import logging

from ..lifecycle.runtime import LoadedModel, compute_latent, load_model, model_data

logger = logging.getLogger("cellvi")


def load_for(source, key: str, capability: str, verb: str, *, family_verb: bool) -> LoadedModel:
    """The model at ``source.uns[key]``, checked to have ``capability``; for a family-named
    ``verb``, also checked to be of that verb's family."""
    model = load_model(source, key)
    if family_verb:
        model.family.require_verb(verb, capability, key=key)
    else:
        model.require(capability, verb)
    return model


def write_embedding(data, model: LoadedModel, *, key_added: str, batch_size: int, copy: bool):
    latent = compute_latent(model.module, model_data(data, model), batch_size)
    data = data.copy() if copy else data
    data.obsm[f"X_{key_added}"] = latent
    logger.info(f"    added 'X_{key_added}' (.obsm)")
    return data if copy else None
