"""RBM layer kinds. Each kind registers itself in ``stages.registry`` under its config name."""
