# Sourced by the GPU scripts: a GPU machine has torch but no internet and not every package we use. Wheels carried
# in .whl/ (see `scripts/gpu_lab.sh fetch`) are installed into .whl/site and put on PYTHONPATH, with the package
# from this checkout, whether or not it is installed.
if compgen -G ".whl/*.whl" >/dev/null; then
  "${PY:-python3}" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .whl/site \
    .whl/*.whl || { echo "installing the carried wheels failed" >&2; exit 1; }
  export PYTHONPATH=$PWD/.whl/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
