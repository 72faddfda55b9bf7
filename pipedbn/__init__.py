"""pipedbn: deep belief networks whose RBM layers train at the same time, one pipeline stage each.

>>> import pipedbn
>>> dbn = pipedbn.load("runs/quickstart/20261123-120000")   # a run directory or export file
>>> features = dbn.transform(dbn.preprocess(raw_images))    # top-layer hidden probabilities
>>> est = pipedbn.DBN([256, 64], epochs=10).fit(X)           # train on local processes
>>> rows = pipedbn.read_split("runs/quickstart/20261123-120000")["held_out"]  # never trained on
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipedbn.model.dbn import Model, load
from pipedbn.run.rundir import read_split

if TYPE_CHECKING:
    from pipedbn.estimator import DBN

__version__ = "0.1.0"
__all__ = ["DBN", "Model", "load", "read_split", "__version__"]


def __getattr__(name: str) -> Any:
    # the estimator imports scikit-learn, 1.5 s of every process's start-up (the launcher and
    # each worker import this package); it is loaded when first asked for (PEP 562)
    if name == "DBN":
        from pipedbn.estimator import DBN

        return DBN
    raise AttributeError(f"module 'pipedbn' has no attribute {name!r}")
