"""The toy world: coloured shapes, an SD-architecture model trained on them on a CPU, an exact detector, a small CLIP.

Modules: ``scenes`` (rendering and the caption grammar), ``model`` (architectures and shipped weights), ``detector``,
``captioner`` (the toy BLIP), ``train`` (``python -m fidelity_lib.toyworld.train``), ``evaluate`` (sampling and
scoring) and ``calibration`` (the toy world's method settings). Import from them directly; this package file imports
nothing, so that ``fidelity_lib.datasets`` can use the grammar without pulling in the models.
"""
