import os
import sys
import warnings

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
warnings.filterwarnings("ignore")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


@pytest.fixture(scope="session")
def shared_data():
    if not os.path.isdir(SHARED_DATA):
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shapes_model(tmp_path_factory):
    """A tiny CLIP that has learned colour: 48 steps of train.py on generated shapes. Returns the
    run folder (clipscratch.load reads it); its shards are in run/../data."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tmp = tmp_path_factory.mktemp("shapes")
    data = tmp / "data"
    args = ["model=tiny-vit", "data.generate.train_samples=384", "data.generate.val_samples=64",
            f"data.train={data}/train-{{000000..000001}}.tar", f"data.val={data}/val-000000.tar", "data.batch_size=32",
            "data.workers=1", "epochs=4", "optim.lr=2e-3", "optim.warmup_steps=3", "evals={}", "eval_every=0",
            f"output_dir={tmp / 'run'}"]
    p = subprocess.run([sys.executable, os.path.join(root, "train.py"), *args], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    return str(tmp / "run")
