"""CIDEr-D equals pycocoevalcap's on real Flickr8k captions."""
import os
import random

import pytest

from clipscratch.eval.cider import cider_d, words


def test_cider_d_equals_pycocoevalcap_on_flickr8k_captions(shared_data):
    Cider = pytest.importorskip("pycocoevalcap.cider.cider").Cider
    from clipscratch.data.captions import read_captions

    table = read_captions(os.path.join(shared_data, "flickr8k-1000", "captions.txt"))
    rng = random.Random(0)
    images = sorted(table)[:300]
    # candidates: a caption of the image itself (left out of its references), of another image, or a made-up one
    candidates, references = {}, {}
    for i, name in enumerate(images):
        caps = table[name]
        if i % 3 == 0:
            candidates[name], references[name] = caps[0], caps[1:]
        elif i % 3 == 1:
            candidates[name], references[name] = table[images[(i + 7) % len(images)]][0], caps
        else:
            candidates[name], references[name] = " ".join(rng.sample(words(" ".join(caps)), 6)), caps
    ours, per_image = cider_d(candidates, references)
    tokenized = lambda text: " ".join(words(text))  # noqa: E731  (both scorers read the same words)
    theirs, their_scores = Cider().compute_score({k: [tokenized(r) for r in v] for k, v in references.items()},
                                                 {k: [tokenized(v)] for k, v in candidates.items()})
    assert ours == pytest.approx(theirs, rel=1e-9)
    assert [per_image[k] for k in images] == pytest.approx(list(their_scores), rel=1e-9)
    assert 0.1 < ours < 3  # a mix of good and bad candidates
    own = [per_image[k] for i, k in enumerate(images) if i % 3 == 0]
    other = [per_image[k] for i, k in enumerate(images) if i % 3 == 1]
    assert sum(own) / len(own) > 3 * sum(other) / len(other)
