"""muP width transfer (Salt's ``muP_config``); see docs/mup.md.

* :mod:`saltx.mup.shapes`: step 1, ``python -m saltx.mup.shapes +experiment=gn2_mup`` writes
  the base shapes from a base and a delta model of the same config.
* :mod:`saltx.mup.setup`: step 2, :func:`apply_mup` sets the base shapes on a freshly built
  model (called by ``saltx.models.build.build_model`` when ``model.muP`` is true).
* :mod:`saltx.mup.fold`: :func:`fold_mureadout` turns MuReadouts into plain linear layers
  for the ONNX export.
* :mod:`saltx.mup.coord_check`: activation sizes against width, muP vs SP.

The ``mup`` package is imported only by these submodules, not by this package.
"""
