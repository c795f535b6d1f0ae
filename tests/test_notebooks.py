"""The Colab notebooks (colab/*.ipynb) run top to bottom, and each is its jupytext source.

Each notebook runs in a fresh kernel of this interpreter with SPECTAX_SMALL=1 (tiny random models, a few tokens,
nothing downloaded) and the tests' fast-compiling XLA flags; any cell that raises fails the test. The notebooks must
work with the repository root or colab/ as working directory, and both are exercised. Each .ipynb is committed
without outputs and holds the cells of its colab/<name>.py (jupytext percent format): edit the .py and re-sync
with `jupytext --sync colab/*.py`.
"""

import json
import os
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]
COLAB = ROOT / "colab"
NOTEBOOKS = sorted(p.stem for p in COLAB.glob("*.ipynb"))
SOURCES = sorted(p.stem for p in COLAB.glob("*.py"))
WORKING_DIR = {"quickstart": COLAB, "tpu_sharded": COLAB}     # the others run from the repository root
# conftest.py's flags without its 8 host devices: each notebook sets up the devices it needs (tpu_sharded: 8)
KERNEL_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
CELL_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def kernel_specs(tmp_path_factory) -> KernelSpecManager:
    """Only one kernel, "python3", and it is this interpreter (not whatever `python` a kernelspec on the machine
    would start)."""
    kernels = tmp_path_factory.mktemp("kernels")
    (kernels / "python3").mkdir()
    (kernels / "python3" / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (the tests' interpreter)", "language": "python"}))
    return KernelSpecManager(kernel_dirs=[str(kernels)], ensure_native_kernel=False)


def kernel_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "SPECTAX_SOURCE")}
    env.update(
        SPECTAX_SMALL="1",
        TMPDIR=str(tmp),                 # what the notebooks write (tempfile.mkdtemp) goes to the test's tmp_path
        XLA_FLAGS=KERNEL_XLA_FLAGS,
        PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),  # spectax importable
        JAX_COMPILATION_CACHE_DIR=str(ROOT / ".pytest_cache" / "jax"),   # conftest.py's persistent cache
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5",
    )
    return env


def execute(nb, cwd: Path, kernel_specs: KernelSpecManager, tmp: Path):
    """Runs every cell of `nb` in order in a fresh kernel started in `cwd`; CellExecutionError at the first error."""
    km = KernelManager(kernel_name="python3", kernel_spec_manager=kernel_specs)
    client = NotebookClient(nb, km=km, kernel_name="python3", timeout=CELL_TIMEOUT_S, shutdown_kernel="immediate",
                            resources={"metadata": {"path": str(cwd)}})
    return client.execute(env=kernel_env(tmp), cleanup_kc=True)   # the kernel ends with the run, error or not


def test_the_four_notebooks_are_there_each_paired():
    assert NOTEBOOKS == SOURCES == ["pipeline", "quickstart", "tpu_sharded", "train_drafter"]
    assert {WORKING_DIR.get(name, ROOT) for name in NOTEBOOKS} == {ROOT, COLAB}


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name, kernel_specs, tmp_path):
    nb = nbformat.read(COLAB / f"{name}.ipynb", as_version=4)
    execute(nb, WORKING_DIR.get(name, ROOT), kernel_specs, tmp_path)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "every code cell must have run"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]


def test_a_failing_cell_fails_the_run(kernel_specs, tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1"),
                                         nbformat.v4.new_code_cell("raise ValueError(f'boom {x}')"),
                                         nbformat.v4.new_code_cell("print('after')")])
    with pytest.raises(CellExecutionError, match="boom 1"):
        execute(nb, tmp_path, kernel_specs, tmp_path)
    assert nb.cells[2].execution_count is None and not nb.cells[2].outputs, "no cell may run after the error"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_has_no_outputs_and_matches_its_source(name):
    nb = nbformat.read(COLAB / f"{name}.ipynb", as_version=4)
    source = jupytext.read(COLAB / f"{name}.py")
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, \
                f"{name}.ipynb has outputs: clear them (jupytext --to ipynb colab/{name}.py)"
    assert [(c.cell_type, c.source) for c in nb.cells] == [(c.cell_type, c.source) for c in source.cells], \
        f"{name}.ipynb and {name}.py differ: jupytext --sync colab/{name}.py"
    assert nb.metadata.get("jupytext", {}).get("formats") == "ipynb,py:percent"
    assert nb.metadata.kernelspec.name == "python3"
