"""Training: config errors, optimizer groups, a short run, and exact resume after SIGKILL."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import clipscratch
from clipscratch.errors import ClipscratchError
from clipscratch.train.config import load_config
from clipscratch.train.optim import freeze, make_optimizer, warmup_cosine
from clipscratch.train.config import OptimConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["model=tiny-vit", "data.synthetic=384", "eval_zeroshot=[digits]", "data.batch_size=32", "data.workers=1", "epochs=2",
        "optim.warmup_steps=3", "log_every=1", "save_every=5", "keep_checkpoints=10"]


def _train(args, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _losses(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [(r["step"], r["loss"]) for r in map(json.loads, f) if "loss" in r]


def test_unknown_key_and_wrong_type_are_clear_errors():
    with pytest.raises(ClipscratchError, match="unknown config key 'optim.learning_rate'.*valid keys in optim: .*lr"):
        load_config(None, ["optim.learning_rate=1e-3"])
    with pytest.raises(ClipscratchError, match="data.batch_size.*expects int"):
        load_config(None, ["data.batch_size=lots"])
    cfg = load_config(None, ["optim.lr=1e-3", "data.batch_size=64", "freeze=[visual.*]"])
    assert cfg.optim.lr == 1e-3 and cfg.data.batch_size == 64 and cfg.freeze == ["visual.*"]


def test_shipped_configs_load():
    for name in os.listdir(os.path.join(ROOT, "configs")):
        cfg = load_config(os.path.join(ROOT, "configs", name), [])
        assert cfg.model in clipscratch.list_models()


def test_train_cli_errors_are_one_line(tmp_path):
    for args in (["--config", str(tmp_path / "missing.yaml")], ["optim.nope=1"], ["model=ViT-Z/99", f"output_dir={tmp_path}", "max_steps=1"]):
        p = _train(args)
        out, err = p.communicate(timeout=120)
        assert p.returncode == 2, err
        assert err.strip().count("\n") == 0 and err.startswith("error:"), err


def test_no_weight_decay_on_gains_biases_embeddings_and_temperature():
    model = clipscratch.create_model("tiny-vit")
    opt = make_optimizer(model, OptimConfig(weight_decay=0.2))
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for p in opt.param_groups[1]["params"]}
    assert {"logit_scale", "text.token_embedding.weight", "text.positional_embedding", "visual.class_embedding",
            "visual.positional_embedding", "visual.ln_pre.weight", "text.transformer.resblocks.0.attn.in_proj_bias"} <= no_decay
    assert "visual.transformer.resblocks.0.mlp.c_fc.weight" not in no_decay
    assert opt.param_groups[0]["weight_decay"] == 0.2 and opt.param_groups[1]["weight_decay"] == 0.0


def test_freeze_by_pattern_and_schedule_shape():
    model = clipscratch.create_model("tiny-vit")
    n = freeze(model, ["visual.*"])
    assert n == sum(1 for name, _ in model.named_parameters() if name.startswith("visual."))
    assert all(not p.requires_grad for name, p in model.named_parameters() if name.startswith("visual."))
    with pytest.raises(ClipscratchError, match="matches no parameter"):
        freeze(model, ["vision.*"])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, 4, 20)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0] and lrs[4] == pytest.approx(1.0) and lrs[-1] < 0.01
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))


def test_sigkill_mid_run_then_resume_reproduces_the_loss_sequence(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    p = _train(TINY + [f"output_dir={full}"])
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-2000:]
    reference = _losses(full)
    assert len(reference) == 24 and reference[-1][1] < reference[0][1]

    p = _train(TINY + [f"output_dir={killed}"])
    ckpt = killed / "checkpoints" / "step_00000010"
    deadline = time.time() + 600
    while not ckpt.exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    os.kill(p.pid, signal.SIGKILL)
    p.communicate()
    assert ckpt.exists()
    resumed = _train(TINY + [f"output_dir={killed}", "--resume", "latest"])
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-2000:]
    assert "resumed from" in out
    assert _losses(killed) == reference

    model, _ = clipscratch.load(str(full / "checkpoints" / "step_00000024"))
    assert model.config == clipscratch.get_config("tiny-vit")
    assert (full / "curves.png").exists() and (full / "results.json").exists()
    results = json.load(open(full / "results.json"))
    assert 0 <= results["zeroshot_top1_digits"] <= 1 and results["chance_colour"] == pytest.approx(1 / 6)


def test_configs_default_yaml_is_the_embedded_default():
    from clipscratch.train.config import DEFAULT_RUN

    assert load_config(os.path.join(ROOT, "configs", "default.yaml"), []) == load_config(None, [], base=DEFAULT_RUN)


def test_siglip_gradient_caching_and_locked_image_tuning_train_end_to_end(tmp_path):
    out = tmp_path / "lit"
    p = _train(["model=tiny-vit", "data.synthetic=256", "data.batch_size=16", "data.workers=1", "max_steps=4",
                "loss=siglip", "accum_steps=2", "freeze=[visual.*]", "grad_checkpointing=true", "log_every=1",
                f"output_dir={out}"])
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-2000:]
    losses = [l for _, l in _losses(out)]
    assert len(losses) == 4 and losses[-1] < losses[0]
    torch.manual_seed(0)  # train.py seeds 0 before building the model: the frozen tower is the initial one
    initial = clipscratch.create_model("tiny-vit", init_logit_bias=-10.0, init_logit_scale=2.302585092994046)
    trained, _ = clipscratch.load(str(out / "checkpoints" / "step_00000004"))
    for name, value in trained.state_dict().items():
        same = torch.equal(value, initial.state_dict()[name])
        assert same == name.startswith("visual."), name


def test_gpu_decode_option_trains_end_to_end_on_cpu(tmp_path):
    """data.gpu_decode on the CPU: packed JPEG batches from a worker, crops drawn there,
    decoded and resampled in the trainer; the loss falls."""
    out = tmp_path / "gd"
    p = _train([*TINY, "epochs=1", "data.gpu_decode=true", f"output_dir={out}", "save_every=100"])
    stdout, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-2000:]
    losses = [loss for _, loss in _losses(out)]
    assert len(losses) >= 10 and all(math.isfinite(x) for x in losses)
    assert min(losses[-3:]) < losses[0] - 0.3, losses


def test_to_device_drops_jpegs_the_gpu_cannot_decode_and_counts_them_in_the_batch():
    import io as _io
    from types import SimpleNamespace

    from PIL import Image

    from clipscratch.train.loop import Trainer

    buf = _io.BytesIO()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(buf, format="JPEG")
    good = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
    bad = torch.frombuffer(bytearray(b"\xff\xd8 header only, no image data"), dtype=torch.uint8)
    batch = {"images": torch.cat([good, bad, good]), "jpeg_ends": torch.tensor([len(good), len(good) + len(bad), 2 * len(good) + len(bad)]),
             "tokens": torch.arange(3)[:, None].repeat(1, 5), "skipped": {"missing caption": 2}}
    trainer = SimpleNamespace(accelerator=SimpleNamespace(device=torch.device("cpu")), image_size=32)
    images, tokens = Trainer.to_device(trainer, batch)
    assert images.shape == (2, 3, 32, 32) and tokens[:, 0].tolist() == [0, 2]
    assert batch["skipped"] == {"missing caption": 2, "corrupt image": 1}
