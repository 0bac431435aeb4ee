#!/bin/bash
# How benchmarks/results/speed_gpu/ was measured: `make speed`'s GPU run on a bare GPU machine with no package
# index (CUDA torch, transformers, numpy and pyarrow installed; Python 3.12), its working tree copied there with
# models/lm and data/tokens. With an index, `make speed` on the GPU machine runs the same benchmarks (its cache,
# if missing, comes from `dvc repro activations` with activations.device: auto, i.e. built on the GPU).
#
# Beforehand, where pip reaches an index (the versions of requirements.lock and the peers' venvs):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       --platform any -d .whl transformer-lens==4.3.0 sae-lens==6.54.12 eai-sparsify==1.3.3 pydantic==2.14.3 \
#       pydantic-core==2.50.4 datasets==5.2.0 wandb==0.31.0 ...  (what the image lacks: run.log's set-up lines)
#   pip download ... -d .whl-tl3 transformer-lens==3.9.0          (SAELens pins transformer-lens < 4)
# Then, on the GPU machine, from the repository root: bash benchmarks/offline_gpu.sh <commit> 2>&1 | tee run.log
set -uo pipefail
export PYTHONUNBUFFERED=1
T0=$(date +%s); el() { echo "== $1 at $(( $(date +%s) - T0 )) s"; }
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader; nproc; python3 -V
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir .whl/*.whl || exit 3
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site-tl3 .whl-tl3/*.whl || exit 3
# the peers' "venvs": SAELens sees transformer-lens 3.9 ahead of 4.3 (benchmarks/harness.worker_env keeps this path)
mkdir -p /tmp/py
printf '#!/bin/sh\nexport PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}/tmp/site-tl3"\nexec python3 "$@"\n' > /tmp/py/saelens
printf '#!/bin/sh\nexec python3 "$@"\n' > /tmp/py/sparsify
chmod +x /tmp/py/saelens /tmp/py/sparsify
export PYTHONPATH=$PWD/src:$PWD
python3 -c "import torch, transformers, saelab.data.lm; from importlib.metadata import version as v; print('torch', torch.__version__, torch.cuda.get_device_name(), 'TL', v('transformer-lens'), 'transformers', transformers.__version__)" || exit 4
/tmp/py/saelens -c "import sae_lens, transformer_lens; print('sae_lens', sae_lens.__file__, 'TL', transformer_lens.__file__)" || exit 4
/tmp/py/sparsify -c "import sparsify, triton; print('sparsify ok, triton', triton.__version__)" || exit 4
/tmp/py/saelens -c "from importlib.metadata import version as v; print(*(f'{n} {v(n)}' for n in ('sae-lens', 'eai-sparsify', 'transformer-lens')))"
el setup
# the activation cache of the CPU table's run: the same LM, tokens and params, built on this machine's CPU
cp params.yaml /tmp/params.orig
trap 'cp /tmp/params.orig params.yaml' EXIT
sed -i '/^activations:/,/^[a-z]/s/^  device: auto/  device: cpu/' params.yaml
python3 -m stages.activations --lm models/lm --tokens data/tokens --out data/activations --sites data/sites \
    --metrics /tmp/m.json --timing /tmp/t.json 2>&1 | tail -2
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 5
cp /tmp/params.orig params.yaml
sha256sum data/activations/shard-00000.parquet
el cache
timeout "${SPEED_LIMIT:-540}" python3 benchmarks/speed.py --device cuda --saelens-python /tmp/py/saelens \
    --sparsify-python /tmp/py/sparsify --topk-steps 150 --dense-tokens 1228800 --commit "${1:-unknown}" \
    --out benchmarks/results/speed_gpu
echo "speed.py exit $?"
el total
