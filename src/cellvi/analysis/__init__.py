"""Model-agnostic analysis of trained models, without AnnData or plots.

``bayes_de``: Bayesian differential-expression statistics from posterior samples.
``posterior``: posterior draws of the latent and of normalised expression, and importance
weights for the marginal likelihood. ``surgery``: extending a trained model to new batches and
freezing what it learned (query mapping).
"""
