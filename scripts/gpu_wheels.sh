#!/usr/bin/env bash
# Download, here (where PyPI answers), the wheels of the Python packages that fastgan needs and the
# lent GPU machines' image lacks, into .whl/ (git-ignored); scripts/gpu_session.sh installs every
# wheel it finds there before anything else. The GPU machine has no network and Python 3.12 on x86-64.
#
#   bash scripts/gpu_wheels.sh                  # pyproject's requirements that GPU_IMAGE below lacks
#   bash scripts/gpu_wheels.sh 'name==1.2' ...  # these as well
#
# Then name .whl in the device tool's carry: run(command="bash scripts/gpu_session.sh", carry=[".whl"]).
# A package's own requirements are fetched too when the image lacks them; a name that already has a
# wheel in the folder is not fetched again (two versions of one package would stop the install).
# GPU_IMAGE is the image's package list as the device tool documents it; setup's probe in each
# session (env.json, session.json "requirements") says what was really missing there.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${WHEELS:-.whl}
mkdir -p "$DEST"
exec "${PYTHON:-python3}" - "$DEST" "$@" <<'PY'
import re, subprocess, sys, tomllib, zipfile
from pathlib import Path

try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement

GPU_IMAGE = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl
zipp""".split()
TARGET = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
          "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
          "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wanted(text: str) -> Requirement | None:
    req = Requirement(text)
    if req.marker is not None and not req.marker.evaluate(TARGET):
        return None
    return None if canon(req.name) in IMAGE else req


def have(dest: Path) -> dict[str, Path]:
    return {canon(p.name.split("-")[0]): p for p in dest.glob("*.whl")}


dest, extra = Path(sys.argv[1]), sys.argv[2:]
IMAGE = {canon(n) for n in GPU_IMAGE}
project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
todo = [r for r in (wanted(t) for t in project.get("dependencies", [])) if r is not None]
todo += [Requirement(t) for t in extra]
fetched = []
while todo:
    req = todo.pop(0)
    if canon(req.name) in have(dest):
        continue
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", *[x for p in PLATFORMS for x in ("--platform", p)], "-d", str(dest), str(req)]
    print("$ pip download", req, flush=True)
    subprocess.run(cmd, check=True)
    whl = have(dest).get(canon(req.name))
    if whl is None:
        sys.exit(f"no wheel of {req.name} appeared in {dest}")
    fetched.append(whl.name)
    with zipfile.ZipFile(whl) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        for line in z.read(meta).decode().splitlines():
            if line.startswith("Requires-Dist:"):
                dep = wanted(line.split(":", 1)[1].strip())
                if dep is not None:
                    todo.append(dep)
for name in sorted(p.name for p in dest.glob("*.whl")):
    pure = name.endswith("-none-any.whl")
    print(f"{dest}/{name}" + ("" if pure else "   (binary: built for one platform)"))
if not fetched:
    print(f"nothing to fetch: every requirement is in the GPU image or already in {dest}")
PY
