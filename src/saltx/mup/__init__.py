"""muP width transfer (Salt's ``muP_config``); see docs/mup.md.

* :mod:`saltx.mup.shapes`: step 1, ``python -m saltx.mup.shapes +experiment=gn2_mup`` writes
  the base shapes from a base and a delta model of the same config (built by a function
  the caller passes: this package never imports ``saltx.models``).
* :mod:`saltx.mup.setup`: step 2, :func:`apply_mup` sets the base shapes on a freshly built
  model (called once by the composition step, ``saltx.assemble.build_model``, when
  ``model.muP`` is true).
* :mod:`saltx.mup.fold`: :func:`fold_mureadout` turns MuReadouts into plain linear layers
  for the ONNX export.
* :mod:`saltx.mup.coord_check`: activation sizes against width, muP vs SP (a tool: it
  builds real models and data through :mod:`saltx.assemble`).

The ``mup`` package is imported only by these submodules, not by this package.
"""
