"""Zero-shot accuracy and retrieval equal CLIP_benchmark's on the same model (exported to
open_clip) and the same images and captions."""
import csv
import os

import pytest
import torch

import clipscratch
from helpers import open_clip_twin
from clipscratch.eval.datasets import digits
from clipscratch.eval.splits import Splits
from clipscratch.eval.features import FeatureExtractor
from clipscratch.eval.zeroshot import zeroshot_metrics


def test_zeroshot_accuracy_equals_clip_benchmark(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    zsc = pytest.importorskip("clip_benchmark.metrics.zeroshot_classification")
    from clipscratch.eval.fewshot import finetune

    torch.manual_seed(0)
    base = clipscratch.create_model("tiny-vit")
    # a model with real, varied predictions: the image tower briefly trained on 300 training digits
    splits = Splits(digits())
    train = splits["train"]
    preprocess = clipscratch.image_transform(base.config.vision.image_size)
    images = torch.stack([preprocess(im) for im in train.images[:300]])
    tokens = clipscratch.tokenize([t.format(c) for c in train.classnames for t in train.templates])
    ours = finetune(base, "image", images, train.labels[:300], tokens, 10, epochs=15, lr=2e-3)
    ref = open_clip_twin(ours, tmp_path)

    data = splits["test"]
    class Digits(torch.utils.data.Dataset):  # CLIP_benchmark reads dataset.classes
        classes = data.classnames

        def __len__(self):
            return len(data)

        def __getitem__(self, i):
            return preprocess(data.images[i]), int(data.labels[i])

    loader = torch.utils.data.DataLoader(Digits(), batch_size=128)
    # clip_benchmark 1.6's accuracy() calls float() on a 1-element array, which numpy >= 2.5 refuses;
    # the same computation with .item(), everything else of theirs unchanged
    def accuracy(output, target, topk=(1,)):
        pred = output.topk(max(topk), 1, True, True)[1].t()
        correct = pred.eq(target.view(1, -1).expand_as(pred))
        return [correct[:k].reshape(-1).float().sum().item() / len(target) for k in topk]

    zsc.accuracy = accuracy
    templates = [t.replace("{}", "{c}") for t in data.templates]  # CLIP_benchmark's template syntax
    theirs = zsc.evaluate(ref, loader, open_clip.get_tokenizer("ViT-B-32"), data.classnames, templates, "cpu", amp=False)

    ex = FeatureExtractor(ours, preprocess, progress=False)
    feats, classifier = ex.image_features(data), ex.classifier(data.classnames, data.templates)
    mine = zeroshot_metrics(feats, data.labels, classifier)
    assert len((feats @ classifier.T).argmax(1).unique()) >= 8 and mine["top1"] > 0.3
    assert abs(mine["top1"] - theirs["acc1"]) <= 0.001
    assert abs(mine["mean_per_class_recall"] - theirs["mean_per_class_recall"]) <= 0.001


def test_retrieval_on_flickr8k_equals_clip_benchmark(shared_data, tmp_path):
    """The 125 official test photos of flickr8k-1000 with their 625 captions, through
    make_shards and evaluate.py retrieval, against CLIP_benchmark's Flickr dataset and
    zeroshot_retrieval on the same files. Recall at k up to 50 of 125 images probes the
    whole ranking, not only the top (a random model is near chance at R@1)."""
    open_clip = pytest.importorskip("open_clip")
    import sys

    from clip_benchmark.datasets.flickr import Flickr
    from clip_benchmark.metrics import zeroshot_retrieval

    from clipscratch.data.make_shards import main as make_shards

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import evaluate

    photos, caps = os.path.join(shared_data, "flickr8k-1000"), os.path.join(shared_data, "flickr8k-captions")
    make_shards(["--captions", os.path.join(photos, "captions.txt"), "--only", os.path.join(caps, "Flickr_8k.testImages.txt"),
                 "--split", "test", "--out", str(tmp_path / "shards")])
    torch.manual_seed(0)
    ours = clipscratch.create_model("tiny-vit").eval()
    clipscratch.save_checkpoint(ours, str(tmp_path / "ckpt"))
    ks = [1, 5, 10, 20, 50]
    mine = evaluate.main(["retrieval", "--model", str(tmp_path / "ckpt"), "--dataset", f"wds:{tmp_path}/shards/shard-000000.tar",
                          "--out", str(tmp_path / "out"), "--cache-dir", "", "--ks", *map(str, ks)])
    assert mine["images"] == 125 and mine["captions"] == 625

    test_names = {line.strip() for line in open(os.path.join(caps, "Flickr_8k.testImages.txt")) if line.strip()}
    with open(os.path.join(photos, "captions.txt"), newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["image"] in test_names]
    with open(tmp_path / "ann.txt", "w") as f:  # CLIP_benchmark's Flickr annotation format
        f.write("image,caption\n" + "".join(f"{r['image']},{r['caption']}\n" for r in rows))
    dataset = Flickr(os.path.join(photos, "images"), str(tmp_path / "ann.txt"), transform=clipscratch.image_transform(32))
    def collate(batch):  # CLIP_benchmark's image_captions_collate_fn (its builder module needs `requests`)
        images, captions = zip(*batch)
        return torch.stack(images), captions

    loader = torch.utils.data.DataLoader(dataset, batch_size=64, collate_fn=collate)
    theirs = zeroshot_retrieval.evaluate(open_clip_twin(ours, tmp_path), loader, open_clip.get_tokenizer("ViT-B-32"), "cpu",
                                         amp=False, recall_k_list=ks)
    assert theirs["text_retrieval_recall@50"] > 0.3  # the ranking is probed far beyond chance at R@1
    for k in ks:
        assert abs(mine[f"text_to_image_R@{k}"] - theirs[f"image_retrieval_recall@{k}"]) <= 0.001, k
        assert abs(mine[f"image_to_text_R@{k}"] - theirs[f"text_retrieval_recall@{k}"]) <= 0.001, k
