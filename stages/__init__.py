"""RBM layer kinds: each a subclass of ``pipedbn.model.rbm.RBM`` (the only part of pipedbn a
kind imports), listed in ``stages.registry`` under its config name."""
