"""Model lifecycle: storage of trained models in ``.uns`` (and, later, criticism and hub)."""
