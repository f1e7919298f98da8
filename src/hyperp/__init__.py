"""hyperp: transferable hypersphere optimization (HyperP) for language models.

See METHOD.md for the method; the public entry points are ``hyperp.optim`` (MuonH, AdamH, the
Muon baseline, parameter roles), ``hyperp.rules`` (transfer rules) and the ``hyperp`` CLI.
"""

__version__ = "0.1.0"
