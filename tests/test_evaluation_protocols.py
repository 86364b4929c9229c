"""The protocols on hand-made records with known answers, and the open-vocabulary adapter."""

import numpy as np
import pytest
import torch

from emerdiff_lab.evaluation import protocols as P
from emerdiff_lab.evaluation.openvocab import (
    DenseCLIP,
    classify_masks,
    classify_pixels,
    pool_in_masks,
    run_clip_encoder_layer,
)

# Two images, 2 classes. Image A: masks 0/1 cover classes 0/1 exactly; image B: masks swapped.
GT_A = np.array([[0, 0, 1, 1]] * 2)
GT_B = np.array([[1, 1, 0, 255]] * 2)
E_A = np.array([[1.0, 0.0], [0.0, 1.0]])     # mask 0 ~ class 0, mask 1 ~ class 1
E_B = np.array([[0.1, 0.9], [0.9, 0.1]])     # mask 0 ~ class 1, mask 1 ~ class 0


def _records(emerdiff_b=None):
    mask_b = np.array([[0, 0, 1, 1]] * 2) if emerdiff_b is None else emerdiff_b
    data = [{"gt": GT_A, "emerdiff": np.array([[0, 0, 1, 1]] * 2),
             "bilinear": np.array([[0, 1, 1, 1]] * 2), "mask_embeddings": E_A},
            {"gt": GT_B, "emerdiff": mask_b, "bilinear": np.array([[0, 0, 0, 1]] * 2),
             "mask_embeddings": E_B}]
    return lambda: iter(data)


def test_hungarian_per_image_matching():
    result = P.hungarian(_records(), num_classes=2)
    assert result["emerdiff"]["miou"] == pytest.approx(1.0)
    assert result["emerdiff"]["pixel_accuracy"] == pytest.approx(1.0)
    # bilinear, image A: mask 0 = 2 px of class 0, mask 1 = 2 px class 0 + 4 px class 1 ->
    # matched tp (2, 4), predicted (2, 6). Image B: mask 0 = 4 px class 1 + 2 px class 0, mask 1
    # only ignored pixels -> tp (0, 4), predicted (0, 6). IoU 2/6 and 8/12: mean 0.5.
    tp, gt, pred = np.array([2, 8]), np.array([6, 8]), np.array([2, 6 + 6])
    assert np.mean(tp / (gt + pred - tp)) == pytest.approx(0.5)
    assert result["bilinear"]["miou"] == pytest.approx(0.5)
    assert result["bilinear"]["pixel_accuracy"] == pytest.approx(10 / 14)


def test_modified_protocol_known_answer():
    result = P.modified(_records(), num_classes=2)
    assert result["emerdiff"]["miou"] == pytest.approx(1.0)
    # Concepts are dataset means: class 0 mixes (1,0) x4 px and (0.9,0.1) x2 px -> still nearest
    # to class-0 masks, so a worse pixel assignment (bilinear) is what lowers the score.
    assert result["bilinear"]["miou"] < 1.0
    concepts, counts = P.concept_embeddings(_records(), "emerdiff", 2)
    np.testing.assert_array_equal(counts, [6, 8])
    np.testing.assert_allclose(concepts[0], (4 * E_A[0] + 2 * E_B[1]) / 6)


def test_traditional_protocol_clusters_over_the_dataset():
    result = P.traditional(_records(), num_classes=2)
    assert result["emerdiff"]["miou"] == pytest.approx(1.0)
    # A prediction that puts every pixel in one mask cannot score more than the majority class.
    flat = _records(emerdiff_b=np.zeros((2, 4), int))
    assert P.traditional(flat, num_classes=2)["emerdiff"]["miou"] < 1.0


def test_direct_scores_class_maps():
    def records():
        return iter([{"gt": GT_A, "emerdiff": GT_A, "bilinear": 1 - GT_A}])

    result = P.direct(records, num_classes=2)
    assert result["emerdiff"]["miou"] == 1.0 and result["bilinear"]["miou"] == 0.0


def test_pool_and_classify_hand_made():
    # D=2 embeddings: left half points to class 0's text, right half to class 1's.
    dense = torch.zeros(2, 2, 2)
    dense[0, :, 0] = 1
    dense[1, :, 1] = 1
    labels = torch.tensor([[0, 0, 1, 1]] * 4)
    pooled = pool_in_masks(dense, labels)
    assert pooled.shape == (2, 2) and pooled[0, 0] > pooled[0, 1] and pooled[1, 1] > pooled[1, 0]
    text = torch.eye(2)
    assert torch.equal(classify_masks(dense, labels, text), labels)
    assert torch.equal(classify_pixels(dense, text, (4, 4)), labels)
    with pytest.raises(ValueError, match=r"\(D, h, w\)"):
        pool_in_masks(dense[0], labels)


class WordTokenizer:
    """Offline stand-in for CLIPTokenizer: one id per character, EOS last (CLIP's pooling)."""

    def __call__(self, texts, padding=True, return_tensors="pt"):
        from transformers import BatchEncoding

        rows = [[49406] + [ord(c) % 40000 for c in t] + [49407] for t in texts]
        width = max(map(len, rows))
        ids = torch.tensor([r + [49407] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        return BatchEncoding({"input_ids": ids, "attention_mask": mask})


def tiny_clip():
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 77},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 16},
        projection_dim=16)
    return CLIPModel(config).eval()


def test_dense_clip_shapes_and_cls_path_matches_clip():
    model = tiny_clip()
    clip = DenseCLIP(model, WordTokenizer(), input_size=64)
    dense = clip.dense_embeddings(torch.rand(3, 50, 70))
    assert dense.shape == (16, 4, 4)
    torch.testing.assert_close(dense.norm(dim=0), torch.ones(4, 4))
    text = clip.text_embeddings(["cat", "grass", "sky"])
    assert text.shape == (3, 16)
    assert not torch.allclose(text[0], text[1])
    # Our hand-run encoder must be CLIP's: the class token through the real last block equals
    # get_image_features (which exercises the same embeddings and earlier layers).
    pixels = torch.rand(1, 3, 64, 64)
    vision = model.vision_model
    hidden = vision.pre_layrnorm(vision.embeddings(pixels, interpolate_pos_encoding=True))
    for layer in vision.encoder.layers:
        hidden = run_clip_encoder_layer(layer, hidden)
    ours = model.visual_projection(vision.post_layernorm(hidden[:, 0]))
    theirs = model.get_image_features(pixel_values=pixels, interpolate_pos_encoding=True)
    theirs = getattr(theirs, "pooler_output", theirs)
    torch.testing.assert_close(ours, theirs)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        DenseCLIP(model, WordTokenizer(), input_size=50)


def test_every_protocol_reports_boundary_f_scores_beside_miou():
    """BF of the protocol's own class assignment, per image then averaged. At 2 x 4 px theta is
    far below one pixel, so only coinciding boundary pixels count: EmerDiff's edges coincide
    with the truth's in both images (1); bilinear's lie one column off in both (0)."""
    result = P.hungarian(_records(), num_classes=2)
    for key in ("bf1", "bf2", "bf2_agnostic"):
        assert result["emerdiff"][key] == pytest.approx(1.0)
        assert result["emerdiff"][key + "_sem"] == pytest.approx(0.0)
    assert result["bilinear"]["bf2"] == pytest.approx(0.0)
    assert result["emerdiff"]["bf_images"] == result["bilinear"]["bf_images"] == 2
    for protocol in (P.modified, P.traditional):
        scores = protocol(_records(), num_classes=2)
        assert scores["emerdiff"]["bf2"] == pytest.approx(1.0)
        assert scores["emerdiff"]["bf_images"] == 2
    direct = P.direct(_records(), num_classes=2, methods=("emerdiff",))
    # as class ids, image B's EmerDiff map [0, 0, 1, 1] has its classes swapped: its edge still
    # coincides (class-agnostic 1) but each class's boundary lies elsewhere
    assert direct["emerdiff"]["bf2_agnostic"] == pytest.approx(1.0)
    assert direct["emerdiff"]["bf2"] < 1.0
    lines = P.boundary_table({"hungarian": result}, ["hungarian"], 512, lambda v: f"{100 * v:.1f}")
    assert "θ = 8 px" in lines[0] and "θ = 4 px" in lines[0]
    assert lines[2] == "| hungarian | 100.0 ± 0.0; 100.0 | 0.0 ± 0.0; 0.0 | 2 |"
