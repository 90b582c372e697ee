"""Zero-shot accuracy equals CLIP_benchmark's on the same model (exported to open_clip) and data."""
import pytest
import torch

import clipscratch
from clipscratch.eval.datasets import digits
from clipscratch.eval.features import FeatureExtractor
from clipscratch.eval.zeroshot import zeroshot_metrics
from clipscratch.loading import export
from helpers import randomize_


def test_zeroshot_accuracy_equals_clip_benchmark(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    zsc = pytest.importorskip("clip_benchmark.metrics.zeroshot_classification")
    torch.manual_seed(0)
    ours = randomize_(clipscratch.create_model("tiny-vit"), seed=1, scale=0.2).eval()
    export(ours, str(tmp_path / "oc.pt"), "open_clip")
    cfg = ours.config
    ref = open_clip.model.CLIP(
        embed_dim=cfg.embed_dim, quick_gelu=True,
        vision_cfg=dict(image_size=cfg.vision.image_size, layers=cfg.vision.layers, width=cfg.vision.width,
                        patch_size=cfg.vision.patch_size, head_width=cfg.vision.width // cfg.vision.num_heads),
        text_cfg=dict(context_length=77, vocab_size=49408, width=cfg.text.width, heads=cfg.text.heads, layers=cfg.text.layers),
    )
    ref.load_state_dict(torch.load(tmp_path / "oc.pt", weights_only=True)["state_dict"])
    ref.eval()

    data = digits("test")
    preprocess = clipscratch.image_transform(cfg.vision.image_size)
    loader = torch.utils.data.DataLoader(
        [(preprocess(im), int(y)) for im, y in zip(data.images, data.labels)], batch_size=128)
    theirs = zsc.evaluate(ref, loader, open_clip.get_tokenizer("ViT-B-32"), data.classnames, data.templates, "cpu", amp=False)

    ex = FeatureExtractor(ours, preprocess, progress=False)
    mine = zeroshot_metrics(ex.image_features(data), data.labels, ex.classifier(data.classnames, data.templates))
    assert 0.1 < mine["top1"] < 1.0  # a model that makes real, varied predictions
    assert abs(mine["top1"] - theirs["acc1"]) <= 0.001
    assert abs(mine["mean_per_class_recall"] - theirs["mean_per_class_recall"]) <= 0.001
