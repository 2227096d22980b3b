"""Deco-G: output formats guaranteed by a token DFA and steered by an HMM distilled from the LLM.

Importing this package does not import torch: ``build`` (the gateway table's ``decoders.decog:build``)
loads the torch side on first use. Modules: ``hmm`` (the model and its files), ``em`` (Baum-Welch),
``distill`` (sampling from the LLM, k-means initialisation), ``table`` (the backward table), ``steer``
(the per-request processors), ``processor`` (options, caching, the factory).
"""

from __future__ import annotations
