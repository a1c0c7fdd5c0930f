#!/usr/bin/env bash
# Make tests/fixtures/salt_onnx/: ONNX files exported by salt-ml 0.13.0 (Salt's own
# `to_onnx`) from a tiny GN2-like model, the reference for the format tests of saltx's
# export (tests/pipeline/test_onnx_salt_format.py). Run once, by hand; not part of CI.
#
#   PEERS=/work/peers bash scripts/make_salt_onnx_fixture.sh
#
# Needs saltx's .venv (`make install`, for the synthetic data) and the salt-ml peer kit
# (../shared/peers/salt, or KIT=...; its venv in $PEERS/salt-venv, see the kit's README).
# Steps: 3000 synthetic jets (saltx.data.synthetic, Salt/UPP layout); `salt fit` with the
# kit's GN2 config and the tiny overlay below for 2 steps (kit's run_train.sh); `to_onnx`
# twice: the default export (global tasks) -> network.onnx, and one with the aux tasks,
# a rename and a combined output -> network_aux.onnx.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
KIT=${KIT:-$ROOT/../shared/peers/salt}
OUT=$ROOT/tests/fixtures/salt_onnx
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

"$ROOT/.venv/bin/python" -m saltx.data.synthetic --out "$WORK/data" --n-jets 3000 --seed 1
# shellcheck disable=SC1091
source "$KIT/env.sh"
salt_data_paths "$WORK/data"

# GN2's layout at toy width: init net 21 -> 16 -> 16, one transformer layer (embed 16,
# 2 heads, out_dim 16, Salt's default register token), heads [8]
cat > "$WORK/tiny.yaml" <<'YAML'
model:
  model:
    init_args:
      init_nets:
        - input_name: tracks
          dense_config: {output_size: 16, hidden_layers: [16], activation: ReLU}
      encoder:
        class_path: salt.models.Transformer
        init_args: {num_layers: 1, embed_dim: 16, out_dim: 16, attn_kwargs: {num_heads: 2}}
      pool_net:
        class_path: salt.models.GlobalAttentionPooling
        init_args: {input_size: 16}
      tasks:
        class_path: torch.nn.ModuleList
        init_args:
          modules:
            - class_path: salt.models.ClassificationTask
              init_args:
                name: jets_classification
                input_name: jets
                label: flavour_label
                use_class_dict: True
                loss: {class_path: torch.nn.CrossEntropyLoss}
                dense_config: {input_size: 16, output_size: 4, hidden_layers: [8], activation: ReLU}
            - class_path: salt.models.ClassificationTask
              init_args:
                name: track_origin
                input_name: tracks
                label: ftagTruthOriginLabel
                use_class_dict: True
                weight: 0.5
                loss: {class_path: torch.nn.CrossEntropyLoss}
                dense_config:
                  {input_size: 16, output_size: 8, hidden_layers: [8], activation: ReLU, context_size: 16}
            - class_path: salt.models.VertexingTask
              init_args:
                name: track_vertexing
                input_name: tracks
                label: ftagTruthVertexIndex
                weight: 1.5
                loss: {class_path: torch.nn.BCEWithLogitsLoss, init_args: {reduction: none}}
                dense_config:
                  {input_size: 32, output_size: 1, hidden_layers: [8], activation: ReLU, context_size: 16}
data:
  batch_size: 500
YAML

bash "$KIT/run_train.sh" full "$WORK/run" 2 --config "$WORK/tiny.yaml"
CKPT=$(ls "$WORK"/run/logs/*/ckpts/*.ckpt | tail -n 1)
RUN=$(dirname "$(dirname "$CKPT")")

mkdir -p "$OUT"
to_onnx --ckpt_path="$CKPT" --force --overwrite > "$WORK/to_onnx.log" 2>&1
cp "$RUN/network.onnx" "$OUT/network.onnx"
to_onnx --ckpt_path="$CKPT" --force --overwrite \
  --tasks jets_classification track_origin track_vertexing \
  -r pu:plight --combine_outputs pbc,pb,0.5*pc >> "$WORK/to_onnx.log" 2>&1
cp "$RUN/network.onnx" "$OUT/network_aux.onnx"
python - "$OUT" <<'PY'
import sys, onnx, onnxruntime, salt, torch
from importlib.metadata import version
print(f"salt-ml {version('salt-ml')}, torch {torch.__version__}, onnx {onnx.__version__}, "
      f"onnxruntime {onnxruntime.__version__}")
for name in ("network.onnx", "network_aux.onnx"):
    m = onnx.load(f"{sys.argv[1]}/{name}")
    outs = [(o.name, len(o.type.tensor_type.shape.dim)) for o in m.graph.output]
    print(name, "IR", m.ir_version, "opset", [o.version for o in m.opset_import], outs)
PY
ls -l "$OUT"
