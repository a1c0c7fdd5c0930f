#!/usr/bin/env bash
# Make tests/fixtures/salt/ with salt-ml 0.13.0 through the peer kit (run once by hand;
# not run in CI). From gn2_tiny.yaml (kept in the fixture folder) it writes:
#   test_zprime.h5                  64 synthetic jets (16 track slots), the fields GN2 reads
#   run/config.yaml                 the config `salt fit` saved (class names filled in)
#   run/{norm,class}_dict.yaml      the dict copies `salt fit` made; run/metadata.yaml
#   run/ckpts/<epoch ckpt>.ckpt     the best of 4 epochs of 30 steps (batch 100)
#   run/ckpts/<ckpt stem>__test_test_zprime.h5   `salt test`'s predictions (write_tracks),
#                                   repacked from LZ4 (hdf5plugin) to lzf, values unchanged
#
#   scripts/make_salt_fixture.sh     # needs .venv (make install) and $PEERS/salt-venv
# Environment: PEERS (default /work/peers), SALT_KIT (default ../shared/peers/salt beside
# the checkout), WORK (scratch folder, default a new /tmp/salt-fixture.XXXXXX).
set -euo pipefail
ROOT=$(git rev-parse --show-toplevel)
FIX=$ROOT/tests/fixtures/salt
SALT_KIT=${SALT_KIT:-$ROOT/../shared/peers/salt}
export PEERS=${PEERS:-/work/peers}
WORK=${WORK:-$(mktemp -d /tmp/salt-fixture.XXXXXX)}
PY=$ROOT/.venv/bin/python
echo "scratch: $WORK"

# 1. data: saltx's synthetic generator (train 3000, val 300, test 64 jets; 16 track slots)
"$PY" -m saltx.data.synthetic --out "$WORK/data" --n-jets 3364 --n-val 300 --n-test 64 \
  --n-tracks 16 --n-electrons 2 --seed 13
# the committed test file keeps the fields GN2 reads, the labels and a few jet fields
"$PY" - "$WORK/data/test.h5" "$FIX/test_zprime.h5" "$FIX/gn2_tiny.yaml" <<'PYEOF'
import sys

import h5py
import yaml

src, dst, cfg = sys.argv[1:]
variables = yaml.safe_load(open(cfg))["data"]["variables"]
keep = {
    "jets": variables["jets"]
    + ["pt", "eta", "flavour_label", "HadronConeExclTruthLabelID", "n_tracks"],
    "tracks": variables["tracks"]
    + ["valid", "ftagTruthOriginLabel", "ftagTruthVertexIndex"],
}
with h5py.File(src, "r") as fin, h5py.File(dst, "w") as fout:
    for name, fields in keep.items():
        data = fin[name].fields(fields)[:]
        ds = fout.create_dataset(name, data=data, compression="lzf")
        for key, value in fin[name].attrs.items():
            ds.attrs[key] = value
    for key, value in fin.attrs.items():
        fout.attrs[key] = value
PYEOF

# 2. salt fit (10 steps) and salt test (batch 32: two batches, the last one short)
set +u
# shellcheck disable=SC1091
source "$SALT_KIT/env.sh"
set -u
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
cd "$WORK"
salt fit --config "$FIX/gn2_tiny.yaml" --force --data.train_file="$WORK/data/train.h5" \
  --data.val_file="$WORK/data/val.h5" --data.norm_dict="$WORK/data/norm_dict.yaml" \
  --data.class_dict="$WORK/data/class_dict.yaml" --trainer.default_root_dir="$WORK/logs" \
  --trainer.limit_train_batches=30 --trainer.limit_val_batches=2 > fit.log 2>&1 \
  || { tail -n 30 fit.log; exit 1; }
RUN=$(ls -d "$WORK"/logs/GN2_*/ | head -n 1)
salt test --config "$RUN/config.yaml" --data.test_file="$FIX/test_zprime.h5" \
  --data.batch_size=32 --data.num_test=-1 > test.log 2>&1 || { tail -n 30 test.log; exit 1; }

# 3. copy the run directory's files (not Comet's offline archive) into the fixture; the
# predictions are rewritten with lzf compression (Salt's LZ4 filter needs hdf5plugin)
rm -rf "$FIX/run"
mkdir -p "$FIX/run/ckpts"
cp "$RUN"/config.yaml "$RUN"/metadata.yaml "$RUN"/norm_dict.yaml "$RUN"/class_dict.yaml \
  "$FIX/run/"
for pred in "$RUN"/ckpts/*.h5; do
  cp "${pred%%__test_*}.ckpt" "$FIX/run/ckpts/"   # the (best) checkpoint salt test used
  python - "$pred" "$FIX/run/ckpts/$(basename "$pred")" <<'PYEOF'
import sys

import h5py
import hdf5plugin  # noqa: F401  (Salt's LZ4 filter)

src, dst = sys.argv[1:]
with h5py.File(src, "r") as fin, h5py.File(dst, "w") as fout:
    fout.attrs.update(dict(fin.attrs))
    for name, ds in fin.items():
        data = ds[:]
        out = fout.create_dataset(name, data=data, compression="lzf")
        out.attrs.update(dict(ds.attrs))
        assert out.dtype == ds.dtype and out[:].tobytes() == data.tobytes()
PYEOF
done
echo "salt-ml $(python -c 'import salt, importlib.metadata as m; print(m.version("salt-ml"))')," \
  "torch $(python -c 'import torch; print(torch.__version__)')"
ls -la "$FIX" "$FIX/run" "$FIX/run/ckpts"
du -sh "$FIX"
