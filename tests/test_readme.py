"""The README's marked snippets run as written on the checkpoint its main command produces
(`accelerate launch train.py`: configs/default.yaml, a small-vit with a 32-token context), here
a short run of that same config."""
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = "<!-- tested by tests/test_readme.py -->"


def _snippets():
    text = open(os.path.join(ROOT, "README.md")).read()
    return re.findall(re.escape(MARKER) + r"\s*```python\n(.*?)```", text, flags=re.S)


def test_the_readme_marks_its_runnable_snippets():
    assert len(_snippets()) >= 1


@pytest.fixture(scope="module")
def default_run_folder(tmp_path_factory, shared_data):
    """runs/default as `accelerate launch train.py` leaves it, from a shorter run of the same config."""
    cwd = tmp_path_factory.mktemp("user")
    args = ["data.generate.train_samples=256", "data.generate.val_samples=32", "epochs=1", "data.batch_size=16",
            "evals={}", "eval_every=0"]
    p = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *args], cwd=cwd, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    shutil.copy(os.path.join(shared_data, "flickr8k-1000", "images", "1000268201_693b08cb0e.jpg"), cwd / "photo.jpg")
    return cwd


@pytest.mark.parametrize("index", range(len(_snippets())))
def test_readme_snippet_runs_as_written(index, default_run_folder):
    code = _snippets()[index]
    p = subprocess.run([sys.executable, "-c", code], cwd=default_run_folder, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": ROOT})
    assert p.returncode == 0, f"README snippet {index} failed:\n{code}\n{p.stderr[-3000:]}"
