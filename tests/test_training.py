"""Training: configuration resolved once and checked, a run that learns, exact resume (after a
kill, across corrupt samples, from the newest intact checkpoint), and no lost work."""
import dataclasses
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import pytest
import torch
import yaml
from PIL import Image

import clipscratch
from clipscratch.data.make_shards import Sample, synthetic_samples, write_shards
from clipscratch.errors import ClipscratchError
from clipscratch.train.config import OptimConfig, resolve
from clipscratch.train.optim import freeze, make_optimizer, warmup_cosine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 32


def _tiny(tmp_path, *extra):
    """A tiny run on generated shapes (384 training images in 2 shards, 70 validation images):
    48 steps that take the loss far below chance, ln(32)."""
    data = tmp_path / "data"
    return ["model=tiny-vit", "data.generate.kind=shapes", "data.generate.train_samples=384", "data.generate.val_samples=70",
            f"data.train={data}/train-{{000000..000001}}.tar", f"data.val={data}/val-000000.tar", f"data.batch_size={BATCH}",
            "data.workers=1", "epochs=4", "optim.lr=2e-3", "optim.warmup_steps=3", "log_every=1", "save_every=10",
            "keep_checkpoints=10", "evals={retrieval: {}, shapes: {images: 60}}", *extra]


def _train(args, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _finish(args, ok=True):
    p = _train(args)
    out, err = p.communicate(timeout=600)
    assert (p.returncode == 0) == ok, err[-3000:]
    return out, err


def _losses(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [(r["step"], r["loss"]) for r in map(json.loads, f) if "loss" in r]


def _weights(path):
    return clipscratch.load(str(path))[0].state_dict()


# ---- configuration


def test_unknown_keys_wrong_types_and_out_of_range_values_are_clear_errors():
    with pytest.raises(ClipscratchError, match="unknown config key 'optim.learning_rate'.*valid keys in optim: .*lr"):
        resolve(None, ["optim.learning_rate=1e-3", "data.train=x.tar"])
    with pytest.raises(ClipscratchError, match="data.batch_size.*expects int"):
        resolve(None, ["data.batch_size=lots", "data.train=x.tar"])
    for override, message in (("optim.lr=-1", "'optim.lr' must be > 0"), ("data.batch_size=0", "'data.batch_size' must be >= 1"),
                              ("max_steps=-5", "'max_steps' must be >= 0"), ("precision=fp8", "'precision' must be one of"),
                              ("evals={nope: {}}", "unknown evaluator 'evals.nope'"),
                              ("evals={shapes: {pictures: 3}}", "unknown config key 'evals.shapes.pictures'"),
                              ("model=ViT-Z/99", "unknown model 'ViT-Z/99'"),
                              ("cuda_graphs=true", "'cuda_graphs' must be false without compile=true"),
                              ("cuda_graphs=true\ncompile=true\naccum_steps=2", "'cuda_graphs' must be false with accum_steps > 1"),
                              ("cuda_graphs=true\ncompile=true\ntext_stream=true", "'text_stream' must be false with cuda_graphs")):
        with pytest.raises(ClipscratchError, match=message):
            resolve(None, [*override.split("\n"), "data.train=x.tar"])
    assert resolve(None, ["cuda_graphs=true", "compile=true", "data.train=x.tar"]).cuda_graphs
    with pytest.raises(ClipscratchError, match="'data.train' must be a shard pattern"):
        resolve(None, [])


def test_yaml_words_no_and_off_stay_words_for_string_keys(tmp_path):
    (tmp_path / "c.yaml").write_text("precision: no\ndata: {train: x.tar}\n")
    assert resolve(str(tmp_path / "c.yaml"), []).precision == "no"
    assert resolve(None, ["precision=no", "data.train=x.tar"]).precision == "no"
    assert resolve(None, ["data.trim_text=false", "data.train=x.tar"]).data.trim_text is False


def test_the_resolved_config_is_frozen_and_derives_siglip_values():
    cfg = resolve(None, ["data.train=x.tar", "loss=siglip", "optim.lr=1e-3"])
    assert cfg.optim.lr == 1e-3 and cfg.model_overrides == {"init_logit_bias": -10.0, "init_logit_scale": math.log(10)}
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.optim.lr = 5.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.data = None


def test_shipped_configs_resolve_and_print_config_shows_the_resolved_form():
    from clipscratch.caption.train import resolve as resolve_caption

    for name in sorted(os.listdir(os.path.join(ROOT, "configs"))):
        path = os.path.join(ROOT, "configs", name)
        if name.startswith("caption_"):
            assert resolve_caption(path).captioner.methods, name
            with pytest.raises(ClipscratchError, match="captioning config"):
                resolve(path, [])
            continue
        cfg = resolve(path, [])
        assert cfg.init_from or cfg.model in clipscratch.list_models(), name
    out, _ = _finish(["--print-config", "loss=siglip"])
    printed = yaml.safe_load(out)
    assert printed["model_overrides"]["init_logit_bias"] == -10.0 and printed["data"]["generate"]["kind"] == "shapes"
    assert printed == dataclasses.asdict(resolve(os.path.join(ROOT, "configs", "default.yaml"), ["loss=siglip"]))


def test_train_cli_errors_are_one_line(tmp_path):
    for args in (["--config", str(tmp_path / "missing.yaml")], ["optim.nope=1"], ["model=ViT-Z/99"], ["optim.lr=-1"]):
        _, err = _finish(args, ok=False)
        assert err.strip().count("\n") == 0 and err.startswith("error:"), err


def test_fp8_delayed_without_a_gpu_is_a_one_line_error_before_any_training(tmp_path):
    out_dir = tmp_path / "run"
    _, err = _finish(_tiny(tmp_path, "fp8_delayed=true", "compile=true", "precision=bf16", f"output_dir={out_dir}"), ok=False)
    assert err.strip().splitlines()[-1] == ("error: fp8_delayed=true needs a CUDA GPU with Triton (Hopper: FP8 products); "
                                            "set it false here")
    assert not (out_dir / "metrics.jsonl").exists()


def test_a_bad_config_under_accelerate_launch_is_one_line_without_the_launchers_traceback(tmp_path):
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    p = subprocess.run([accelerate, "launch", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
                        "--dynamo_backend", "no", os.path.join(ROOT, "train.py"), "optim.lr=-1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode != 0
    assert p.stderr.strip().splitlines()[-1] == "error: config key 'optim.lr' must be > 0, got -1.0"
    assert "Traceback" not in p.stderr and "CalledProcessError" not in p.stderr


def test_no_weight_decay_on_gains_biases_embeddings_and_temperature():
    model = clipscratch.create_model("tiny-vit")
    opt = make_optimizer(model, OptimConfig(weight_decay=0.2))
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for p in opt.param_groups[1]["params"]}
    assert {"logit_scale", "text.token_embedding.weight", "text.positional_embedding", "visual.class_embedding",
            "visual.positional_embedding", "visual.ln_pre.weight", "text.transformer.resblocks.0.attn.in_proj_bias"} <= no_decay
    assert "visual.transformer.resblocks.0.mlp.c_fc.weight" not in no_decay
    assert opt.param_groups[0]["weight_decay"] == 0.2 and opt.param_groups[1]["weight_decay"] == 0.0


def test_freeze_by_part_or_pattern_and_schedule_shape():
    model = clipscratch.create_model("tiny-vit")
    n = freeze(model, ["image"])
    assert n == sum(1 for name, _ in model.named_parameters() if name.startswith("visual."))
    assert all(not p.requires_grad for name, p in model.named_parameters() if name.startswith("visual."))
    assert freeze(model, ["text.ln_final.*"]) == 2
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


# ---- a run that learns, and exact resume


def test_sigkill_mid_run_then_resume_reproduces_the_run_exactly(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    _finish(_tiny(tmp_path, f"output_dir={full}"))
    reference = _losses(full)
    assert [s for s, _ in reference] == list(range(1, 49))  # 2 workers' shards x 6 batches x 4 epochs, planned exactly
    assert sum(l for _, l in reference[-5:]) / 5 < 0.75 * math.log(BATCH)  # learned: far below chance
    results = json.load(open(full / "results.json"))
    assert results["val_images"] == 70 and results["chance_zeroshot_colour"] == pytest.approx(1 / 6)
    assert results["zeroshot_colour"] > 0.5  # colour is learned in 48 steps
    records = [json.loads(line) for line in open(full / "metrics.jsonl") if '"loss"' in line]
    waits = [r["data_wait_s"] for r in records]  # the loop's wait for batches since the last log (log_every=1)
    assert len(waits) == 48 and min(waits) >= 0 and max(waits) > 0  # the first batch is always waited for
    assert all(w <= BATCH / r["samples_per_s"] for w, r in zip(waits, records))  # within the window it was logged for

    p = _train(_tiny(tmp_path, f"output_dir={killed}"))
    ckpt = killed / "checkpoints" / "step_00000020"
    deadline = time.time() + 600
    while not ckpt.exists() and time.time() < deadline:
        time.sleep(0.1)
    os.kill(p.pid, signal.SIGKILL)
    p.communicate()
    assert ckpt.exists() and not (killed / "checkpoints" / "step_00000048").exists()  # killed mid-run
    out, _ = _finish(_tiny(tmp_path, f"output_dir={killed}", "--resume", "latest"))
    assert "resumed from" in out
    assert _losses(killed) == reference
    for name, value in _weights(full / "checkpoints" / "step_00000048").items():
        assert torch.equal(value, _weights(killed / "checkpoints" / "step_00000048")[name]), name
    assert (full / "curves.png").stat().st_size > 10_000


def _shards_with_a_corrupt_image(folder):
    """Two shards of shapes, the first with a corrupt JPEG early in it."""
    samples = list(synthetic_samples(256, 3, False, 64))
    samples[5] = Sample(b"\xff\xd8\xff\xe0 not a JPEG at all", ["a broken picture"], {})
    write_shards(iter(samples), str(folder), maxcount=128, prefix="train")
    write_shards(synthetic_samples(40, 4, False, 64), str(folder), maxcount=40, prefix="val")
    return f"data.train={folder}/train-{{000000..000001}}.tar", f"data.val={folder}/val-000000.tar"


def test_resume_from_a_mid_epoch_checkpoint_is_exact_across_a_corrupt_sample(tmp_path):
    """The checkpoint of step 3 sits after the corrupt sample in the same epoch: a resumed worker
    must skip exactly the raw samples it had consumed, the dropped one included."""
    data = _shards_with_a_corrupt_image(tmp_path / "data")
    args = ["model=tiny-vit", *data, "data.generate.kind=", "data.batch_size=16", "data.workers=2", "data.shuffle_buffer=50", "epochs=2",
            "optim.warmup_steps=2", "log_every=1", "save_every=3", "keep_checkpoints=20", "evals={retrieval: {}}"]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    _finish(args + [f"output_dir={full}"])
    reference = _losses(full)
    assert len(reference) == 30 and json.load(open(full / "results.json"))["skipped"] == {"corrupt image": 2}  # once an epoch
    (resumed / "checkpoints").mkdir(parents=True)  # as if killed right after step 3's checkpoint
    shutil.copytree(full / "checkpoints" / "step_00000003", resumed / "checkpoints" / "step_00000003")
    with open(resumed / "metrics.jsonl", "w") as f:
        f.writelines(line for line in open(full / "metrics.jsonl") if json.loads(line)["step"] <= 3)
    _finish(args + [f"output_dir={resumed}", "--resume", "latest"])
    assert _losses(resumed) == reference


def test_rerunning_into_a_run_is_refused_and_nothing_of_it_changes(tmp_path):
    out_dir = tmp_path / "run"
    args = _tiny(tmp_path, f"output_dir={out_dir}", "epochs=1", "evals={}")
    _finish(args)
    before = {p: open(p, "rb").read() for p in map(str, out_dir.rglob("*")) if os.path.isfile(p)}
    _, err = _finish(args + ["save_every=2"], ok=False)
    assert "already holds a training run (checkpoints up to step 12)" in err and "--resume latest" in err
    after = {p: open(p, "rb").read() for p in map(str, out_dir.rglob("*")) if os.path.isfile(p)}
    assert after == before
    _finish(args + ["--overwrite", "save_every=4"])  # asked for: starts over
    assert sorted(os.listdir(out_dir / "checkpoints")) == ["latest", "step_00000004", "step_00000008", "step_00000012"]


def test_resume_latest_falls_back_to_the_newest_intact_checkpoint(tmp_path):
    out_dir = tmp_path / "run"
    args = _tiny(tmp_path, f"output_dir={out_dir}", "epochs=2", "evals={}", "save_every=8")
    _finish(args)
    reference = _losses(out_dir)
    ckpts = out_dir / "checkpoints"
    assert sorted(d for d in os.listdir(ckpts) if d.startswith("step_")) == ["step_00000008", "step_00000016", "step_00000024"]
    state = ckpts / "step_00000024" / "train_state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # truncated
    weights = ckpts / "step_00000016" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    out, _ = _finish(args + ["--resume", "latest"])
    skipped = [line for line in out.splitlines() if line.startswith("skipping checkpoint")]
    assert len(skipped) == 2 and "step_00000024" in skipped[0] and "train_state.pt" in skipped[0]
    assert "step_00000016" in skipped[1] and "model.safetensors" in skipped[1]
    assert "step_00000008 at step 8" in out
    assert _losses(out_dir) == reference  # steps 9-24 again, exactly as before


def test_the_data_generator_never_overwrites_shards_it_did_not_write(tmp_path):
    """The default config generates shapes; pointing its data.train at a user's shards must not
    replace them."""
    folder = tmp_path / "mine"
    write_shards(synthetic_samples(64, 9, True, 32), str(folder), maxcount=32, prefix="train")
    before = {f: (folder / f).read_bytes() for f in os.listdir(folder)}
    _, err = _finish([f"data.train={folder}/train-{{000000..000001}}.tar", f"output_dir={tmp_path / 'out'}"], ok=False)
    assert "that data.generate did not write" in err and err.count("\n") == 1
    assert {f: (folder / f).read_bytes() for f in os.listdir(folder)} == before


def test_resuming_an_older_checkpoint_would_overwrite_newer_ones_and_is_refused(tmp_path):
    out_dir = tmp_path / "run"
    args = _tiny(tmp_path, f"output_dir={out_dir}", "epochs=1", "evals={}", "save_every=4")
    _finish(args)
    _, err = _finish(args + ["--resume", str(out_dir / "checkpoints" / "step_00000008")], ok=False)
    assert "newer than" in err and "step 12" in err


def _tar_member(tar, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_a_shard_cut_inside_a_tar_header_counts_every_sample_it_lost(tmp_path):
    from clipscratch.data.pipeline import ShardDataset, StreamSpec, expand_sources, make_loader, shard_counts
    from clipscratch.transforms import image_transform

    write_shards(synthetic_samples(40, 0, False, 32), str(tmp_path), maxcount=20)
    shard = tmp_path / "shard-000001.tar"
    shard.write_bytes(shard.read_bytes()[: 512 * 30 + 100])  # inside the header of a member, a few samples in
    sources = expand_sources(str(tmp_path / "shard-{000000..000001}.tar"))
    spec = StreamSpec(sources=sources, weights=[1.0], batch_size=4, shuffle_buffer=0, shard_samples=shard_counts(sources))
    batches = list(make_loader(ShardDataset(spec, image_transform(32), 77), 0))
    delivered = sum(len(b["captions"]) for b in batches)
    lost = sum(b["skipped"].get("sample lost in a damaged shard", 0) for b in batches)
    assert 0 < lost < 20
    assert 0 <= 40 - lost - delivered < 4  # the rest is the last partial batch, which is not delivered


@pytest.mark.parametrize("resampled", [False, True])
def test_a_dataset_with_no_usable_sample_stops_with_one_line_and_writes_nothing(tmp_path, resampled):
    folder = tmp_path / "bad"
    folder.mkdir()
    for i in range(2):
        (folder / f"shard-{i:06d}.tar").write_bytes(b"this is not a tar file at all" * 50)
    args = ["model=tiny-vit", f"data.train={folder}/shard-{{000000..000001}}.tar", "data.generate.kind=", "evals={}",
            "data.batch_size=4", "data.workers=1", f"output_dir={tmp_path / 'out'}"]
    args += ["data.resampled=true", "data.samples_per_epoch=64"] if resampled else ["max_steps=10"]
    p = _train(args)
    out, err = p.communicate(timeout=300)  # with resampled=true this used to run forever
    last = err.strip().splitlines()[-1]  # progress bars may come first; the error is the last word
    assert p.returncode == 2 and "Traceback" not in err, err[-2000:]
    assert last.startswith("error: ") and ("no usable batch" in last or "could not be read" in last), last
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_siglip_gradient_caching_and_locked_image_tuning_train_end_to_end(tmp_path):
    out = tmp_path / "lit"
    _finish(_tiny(tmp_path, "max_steps=4", "loss=siglip", "accum_steps=2", "data.batch_size=16", "freeze=[image]",
                  "grad_checkpointing=true", f"output_dir={out}", "evals={}"))
    losses = [l for _, l in _losses(out)]
    assert len(losses) == 4 and losses[-1] < losses[0]
    torch.manual_seed(0)  # the run seeds 0 before building the model: the frozen tower is the initial one
    initial = clipscratch.create_model("tiny-vit", init_logit_bias=-10.0, init_logit_scale=math.log(10))
    trained = _weights(out / "checkpoints" / "step_00000004")
    for name, value in trained.items():
        same = torch.equal(value, initial.state_dict()[name])
        assert same == name.startswith("visual."), name


def test_gpu_decode_option_trains_end_to_end_on_cpu(tmp_path):
    """data.gpu_decode on the CPU: packed JPEG batches from a worker, crops drawn there,
    decoded and resampled in the trainer; the loss falls well below chance (with the MLPs
    recomputed in the backward)."""
    out = tmp_path / "gd"
    _finish(_tiny(tmp_path, "data.gpu_decode=true", "recompute_mlp=true", f"output_dir={out}", "evals={}"))
    losses = [loss for _, loss in _losses(out)]
    assert len(losses) == 48 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < 0.8 * math.log(BATCH), losses


def test_to_device_drops_jpegs_the_gpu_cannot_decode_and_counts_them_in_the_batch():
    from clipscratch.data.prefetch import to_device

    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(buf, format="JPEG")
    good = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
    bad = torch.frombuffer(bytearray(b"\xff\xd8 header only, no image data"), dtype=torch.uint8)
    batch = {"images": torch.cat([good, bad, good]), "jpeg_ends": torch.tensor([len(good), len(good) + len(bad), 2 * len(good) + len(bad)]),
             "tokens": torch.arange(3)[:, None].repeat(1, 5), "skipped": {"missing caption": 2}}
    images, tokens = to_device(batch, torch.device("cpu"), 32)
    assert images.shape == (2, 3, 32, 32) and tokens[:, 0].tolist() == [0, 2]
    assert batch["skipped"] == {"missing caption": 2, "corrupt image": 1}
    batch["tokens"] = clipscratch.tokenize(["a red square", "", "two blue circles on grey"])
    from clipscratch.models.packing import pack_tokens

    _, packed = to_device(batch, torch.device("cpu"), 32, pack=pack_tokens)  # the surviving captions, packed
    assert packed.ids.tolist() == [t for i in (0, 2) for t in batch["tokens"][i].tolist() if t]
    assert packed.starts.tolist() == [0, 5, 12] and packed.layout.shape == (2, 7)


def test_flickr8k_config_trains_on_real_photos_and_scores_the_test_split(tmp_path, shared_data):
    """configs/flickr8k.yaml end to end on the CPU with a tiny model: shards of the official
    train-split photos (real JPEGs, 200 and 500 pixels), retrieval on the 125 test-split photos."""
    from clipscratch.data.make_shards import main as make_shards

    photos, caps = os.path.join(shared_data, "flickr8k-1000"), os.path.join(shared_data, "flickr8k-captions")
    for split, per_shard in (("train", "100"), ("test", "1000")):  # as configs/flickr8k.yaml says
        make_shards(["--captions", os.path.join(photos, "captions.txt"), "--only", os.path.join(caps, f"Flickr_8k.{split}Images.txt"),
                     "--split", split, "--maxcount", per_shard, "--out", str(tmp_path / split)])
    out = tmp_path / "run"
    _finish(["--config", os.path.join(ROOT, "configs", "flickr8k.yaml"), "model=tiny-vit", "precision=no",
             f"data.train={tmp_path}/train/shard-{{000000..000007}}.tar", f"data.val={tmp_path}/test/shard-000000.tar",
             "data.batch_size=32", "data.workers=2", "data.samples_per_epoch=256", "epochs=10", "optim.warmup_steps=5",
             "optim.lr=2e-3", "eval_every=0", "log_every=1", f"output_dir={out}"])
    losses = [l for _, l in _losses(out)]
    assert len(losses) == 80
    late = sum(losses[-8:]) / 8
    assert late < sum(losses[:4]) / 4 - 0.2 and late < math.log(32)  # the loss falls below chance (3.29 seen)
    results = json.load(open(out / "results.json"))
    assert results["val_images"] == 125 and results["val_captions"] == 625  # every test photo, all its captions
    assert results["text_to_image_R@10"] > 10 / 125  # above chance


def test_text_is_packed_by_default_compiled_or_not():
    default = os.path.join(ROOT, "configs", "default.yaml")
    assert resolve(default, []).pack_text is True
    assert resolve(default, ["compile=true"]).pack_text is True
    assert resolve(default, ["pack_text=false"]).pack_text is False
