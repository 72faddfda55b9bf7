"""pipedbn: deep belief networks whose RBM layers train at the same time, one pipeline stage each.

>>> import pipedbn
>>> dbn = pipedbn.load("runs/quickstart/20261123-120000")   # a run directory or export file
>>> features = dbn.transform(dbn.preprocess(raw_images))    # top-layer hidden probabilities
>>> est = pipedbn.DBN([256, 64], epochs=10).fit(X)           # train on local processes
>>> rows = pipedbn.read_split("runs/quickstart/20261123-120000")["held_out"]  # never trained on
"""

from pipedbn.estimator import DBN
from pipedbn.model.dbn import Model, load
from pipedbn.run.rundir import read_split

__version__ = "0.1.0"
__all__ = ["DBN", "Model", "load", "read_split", "__version__"]
