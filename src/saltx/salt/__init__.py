"""Salt interop: convert Salt configs and checkpoints into saltx experiments and runs.

``python -m saltx.salt config SALT.yaml -o DIR/experiment/NAME.yaml`` and
``python -m saltx.salt checkpoint SALT.ckpt --config SALT.yaml -o RUN_DIR``; docs/salt.md.
"""
