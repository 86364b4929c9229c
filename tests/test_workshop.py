"""The workshop: every check accepts the model answer and rejects the usual wrong ones with the
reason, ``...`` is "not answered" (never an error), and the notebook runs with its solutions."""

from types import SimpleNamespace

import nbformat
import pytest
import torch

from emerdiff_lab import workshop as ws
from emerdiff_lab.toyworld.evaluation import VALIDATION_SEED_START
from emerdiff_lab.toyworld.scenes import HELDOUT_SEED_START


@pytest.fixture(autouse=True)
def fresh_lesson():
    ws.new_lesson()


def right(check):
    assert check.status == "right", check
    return check


def wrong(check, *words):
    assert check.status == "wrong", check
    for word in words:
        assert word in check.message, f"{word!r} not in: {check.message}"
    return check


@pytest.fixture(scope="module")
def scene():
    images, labels = ws.scenes(ws.heldout_test_seeds(1))
    return images[0], labels[0]


# ------------------------------------------------------------------------ answers and bookkeeping
def test_every_check_treats_the_placeholder_as_unanswered(scene):
    image, labels = scene
    maps = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    calls = [
        lambda: ws.check_cell_colours(..., image),
        lambda: ws.check_ranking(..., {}),
        lambda: ws.check_change_prediction(..., maps[0], labels, (0, 0)),
        lambda: ws.check_difference_map(..., None),
        lambda: ws.check_class_share(..., maps[0], labels == 0),
        lambda: ws.check_injection_prediction(..., [0.5], [0.5]),
        lambda: ws.check_sweep_seeds(...),
        lambda: ws.check_best_setting(..., {}),
        lambda: ws.check_assembly(..., maps, 1.0),
        lambda: ws.check_miou(..., labels, labels),
        lambda: ws.check_worst_class(..., labels, labels),
        lambda: ws.check_split_count(..., labels, labels, "sky"),
    ]
    for call in calls:
        check = call()
        assert check.status == "unanswered" and not check and "NOT ANSWERED" in repr(check)
    assert len(ws.LESSON.checks) == len(calls)


def test_lesson_times_parts_and_keeps_the_latest_check():
    lesson = ws.new_lesson()
    lesson.part("1. one")
    lesson.part("2. two")
    lesson.finish()
    assert [t for t, _ in lesson.timings()] == ["1. one", "2. two"]
    assert all(s >= 0 for _, s in lesson.timings())
    ws.check_sweep_seeds([1])                             # wrong first ...
    ws.check_sweep_seeds(ws.validation_seeds(1))          # ... then right: the latest counts
    assert lesson.all_right() and "exercises right: 1 of 1" in lesson.report()


def test_solution_names_every_exercise():
    with pytest.raises(ValueError, match="exercises are"):
        ws.solution("9.9")


# ------------------------------------------------------------------------------------ part 1
def test_cell_colours(scene):
    image, _ = scene
    answer = ws.solution("1.1", image=image)
    assert answer.shape == (16, 16, 3)
    right(ws.check_cell_colours(answer, image))
    right(ws.check_cell_colours(answer.numpy(), image))            # numpy is fine too
    wrong(ws.check_cell_colours(answer.permute(2, 0, 1), image), "permute")
    wrong(ws.check_cell_colours(image[:, ::4, ::4].permute(1, 2, 0), image), "one pixel")
    wrong(ws.check_cell_colours(answer * 16, image), "sum")
    wrong(ws.check_cell_colours(answer[:8], image), "expected shape")
    wrong(ws.check_cell_colours([[0.5]], image), "tensor")
    wrong(ws.check_cell_colours(answer + 0.1, image), "differs")


def test_ranking_accepts_close_pairs_either_way_and_rejects_clear_mistakes():
    scores = {"trained features": [0.50, 0.55, 0.45, 0.52],
              "colours": [0.51, 0.54, 0.47, 0.50],
              "random features": [0.25, 0.27, 0.24, 0.26]}
    right(ws.check_ranking(["trained features", "colours", "random features"], scores))
    check = right(ws.check_ranking(["colours", "trained features", "random features"], scores))
    assert "Too close to call" in check.message
    wrong(ws.check_ranking(["random features", "trained features", "colours"], scores),
          "beats random features")
    wrong(ws.check_ranking(["trained features", "colours"], scores), "exactly these three")
    wrong(ws.check_ranking("trained features", scores), "exactly these three")


def test_ranking_on_one_scene_needs_a_large_gap():
    scores = {"trained features": [0.52], "colours": [0.47], "random features": [0.30]}
    right(ws.check_ranking(["colours", "trained features", "random features"], scores))
    wrong(ws.check_ranking(["trained features", "random features", "colours"], scores),
          "colours beats random features")


# ------------------------------------------------------------------------------------ part 2
def _change_map(labels, cell, inside=0.01, same=0.004, other=0.001):
    own = int(labels[cell[0] * 4, cell[1] * 4])
    diff = torch.where(labels == own, same, other)
    diff[ws.cell_pixels(cell)] = inside
    return diff


def test_change_prediction(scene):
    _, labels = scene
    cell = ws.interior_cell(labels, "sky")
    diff = _change_map(labels, cell)
    right(ws.check_change_prediction(ws.solution("2.1"), diff, labels, cell))
    wrong(ws.check_change_prediction(["the cell", "other classes", "the rest of its class"],
                                     diff, labels, cell), "not uniform")
    wrong(ws.check_change_prediction(["the rest of its class", "the cell", "other classes"],
                                     diff, labels, cell), "added at the cell")
    wrong(ws.check_change_prediction(["the cell"], diff, labels, cell), "exactly these three")


def test_interior_cell_lies_inside_its_class(scene):
    _, labels = scene
    row, col = ws.interior_cell(labels, "sky")
    assert (labels[ws.cell_pixels((row, col))] == ws.class_id("sky")).all()
    square = torch.zeros(64, 64, dtype=torch.int64)
    square[8:28, 8:28] = ws.class_id("tree")            # cells 2..6: only cell (4, 4) is inner
    assert ws.interior_cell(square, "tree") == (4, 4)
    square[16:20, 16:20] = 0                             # no inner cell left: any pure one
    row, col = ws.interior_cell(square, "tree")
    assert (square[ws.cell_pixels((row, col))] == ws.class_id("tree")).all()
    with pytest.raises(ValueError, match="unknown class"):
        ws.interior_cell(labels, "cloud")
    with pytest.raises(ValueError, match="entirely"):
        ws.interior_cell(torch.zeros(64, 64, dtype=torch.int64), "fence")


def test_difference_map():
    generator = torch.Generator().manual_seed(0)
    pert = SimpleNamespace(plus=torch.rand(3, 8, 8, generator=generator),
                           minus=torch.rand(3, 8, 8, generator=generator))
    right(ws.check_difference_map(ws.solution("2.2", pert=pert), pert))
    delta = pert.minus - pert.plus
    wrong(ws.check_difference_map(delta.pow(2).sum(0), pert), "square root")
    wrong(ws.check_difference_map(delta.abs().mean(0), pert), "mean absolute")
    wrong(ws.check_difference_map(delta.sum(0), pert), "never negative")
    wrong(ws.check_difference_map(delta.norm(dim=1), pert), "colour channels")
    wrong(ws.check_difference_map(delta.norm(dim=0) * 2, pert), "differs")


# ------------------------------------------------------------------------------------ part 3
def test_class_share(scene):
    _, labels = scene
    cell = ws.interior_cell(labels, "sky")
    diff = _change_map(labels, cell)
    region = labels == ws.class_id("sky")
    answer = ws.solution("3.1", diff=diff, region=region)
    right(ws.check_class_share(answer, diff, region))
    right(ws.check_class_share(torch.tensor(answer), diff, region))   # a 0-d tensor is fine
    wrong(ws.check_class_share(float(region.float().mean()), diff, region), "share of the pixels")
    wrong(ws.check_class_share(1 - answer, diff, region), "outside")
    wrong(ws.check_class_share(float(diff[region].mean() / diff.mean()), diff, region),
          "ratio of means")
    wrong(ws.check_class_share("most", diff, region), "one number")


def test_injection_prediction_follows_the_measurement():
    on, same, worse = [0.60, 0.55, 0.58, 0.62], [0.61, 0.54, 0.58, 0.63], [0.50, 0.45, 0.47, 0.5]
    right(ws.check_injection_prediction("about the same", on, same))
    wrong(ws.check_injection_prediction("down", on, same), "about the same")
    right(ws.check_injection_prediction("down", on, worse))
    wrong(ws.check_injection_prediction("about the same", on, worse), "'down'")
    wrong(ws.check_injection_prediction("worse", on, worse), "one of")


# ------------------------------------------------------------------------------------ part 4
def test_sweep_seeds_must_be_validation_seeds():
    right(ws.check_sweep_seeds(ws.solution("4.1")))
    wrong(ws.check_sweep_seeds(ws.heldout_test_seeds(2)), "test seeds")
    wrong(ws.check_sweep_seeds([0, 1]), "training seeds")
    wrong(ws.check_sweep_seeds([VALIDATION_SEED_START + 1_000_000]), "outside")
    wrong(ws.check_sweep_seeds([]), "no seeds")
    wrong(ws.check_sweep_seeds(HELDOUT_SEED_START), "list")


def test_best_setting():
    scores = {(281, 10.0): 0.52, (481, 10.0): 0.56, (481, 2.0): 0.50}
    assert ws.solution("4.2", scores=scores) == (481, 10.0)
    right(ws.check_best_setting((481, 10), scores))
    wrong(ws.check_best_setting((481, 2), scores), "worst")
    wrong(ws.check_best_setting((281, 10), scores), "1 setting(s)")
    wrong(ws.check_best_setting((500, 10), scores), "not in the sweep")
    wrong(ws.check_best_setting(481, scores), "pair")


# ------------------------------------------------------------------------------------ part 5
def test_assembly():
    maps = torch.rand(4, 32, 32, generator=torch.Generator().manual_seed(0))
    right(ws.check_assembly(ws.solution("5.1", maps=maps, blur_sigma=1.0), maps, 1.0))
    wrong(ws.check_assembly(maps.argmax(0), maps, 1.0), "blur")
    from emerdiff_lab.assembly import gaussian_blur
    wrong(ws.check_assembly(gaussian_blur(maps, 1.0).argmin(0), maps, 1.0), "most")
    wrong(ws.check_assembly(gaussian_blur(maps, 1.0).argmax(1), maps, 1.0), "first axis")
    wrong(ws.check_assembly(gaussian_blur(maps, 1.0).amax(0), maps, 1.0), "integers")


def test_miou_needs_the_matching():
    truth = torch.zeros(8, 8, dtype=torch.int64)
    truth[:, 4:] = 1
    truth[6:, :2] = 2
    pred = torch.ones(8, 8, dtype=torch.int64)             # mask ids swapped w.r.t. classes
    pred[:, 4:] = 0
    pred[:2, :] = 2
    answer = ws.solution("5.2", pred=pred, truth=truth)
    right(ws.check_miou(answer, pred, truth))
    from emerdiff_lab.evaluation.metrics import confusion_matrix, hungarian_miou, mean_iou
    wrong(ws.check_miou(mean_iou(confusion_matrix(pred.numpy(), truth.numpy(), 3)), pred,
                        truth), "arbitrarily")
    wrong(ws.check_miou(hungarian_miou(pred.numpy(), truth.numpy()).pixel_accuracy, pred,
                        truth), "pixel accuracy")
    wrong(ws.check_miou(1.5, pred, truth), "[0, 1]")


# ------------------------------------------------------------------------------------ part 6
@pytest.fixture
def failure_case():
    """Sky (class 0) split in two by the prediction; a thin fence (class 8) never predicted."""
    truth = torch.zeros(40, 40, dtype=torch.int64)
    truth[20:, :] = 3                                   # sand
    truth[24:26, 5:35] = 8                              # a 2-pixel fence rail
    pred = torch.zeros(40, 40, dtype=torch.int64)
    pred[:20, 20:] = 1                                  # the sky in two segments
    pred[20:, :] = 2
    return pred, truth


def test_worst_class(failure_case):
    pred, truth = failure_case
    assert ws.solution("6.1", pred=pred, truth=truth) == "fence"
    right(ws.check_worst_class("fence", pred, truth))
    wrong(ws.check_worst_class("sky", pred, truth), "largest region")
    wrong(ws.check_worst_class("sand", pred, truth), "lower")
    wrong(ws.check_worst_class("house", pred, truth), "one of the classes")


def test_split_count(failure_case):
    pred, truth = failure_case
    assert ws.solution("6.2", pred=pred, truth=truth, name="sky") == 2
    right(ws.check_split_count(2, pred, truth, "sky"))
    wrong(ws.check_split_count(1, pred, truth, "sky"), "at least 5%")
    wrong(ws.check_split_count(3, pred, truth, "sky"), "every segment")
    wrong(ws.check_split_count("two", pred, truth, "sky"), "whole number")


# ------------------------------------------------------------------------------ the notebook
def test_notebook_is_committed_clean_with_its_parameters():
    nb = nbformat.read(ws.NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    namespace = {}
    exec(tagged[0].source, namespace)  # noqa: S102 - our own committed notebook
    assert namespace["solutions"] is False and namespace["smoke"] is False
    source = "\n".join(c.source for c in nb.cells)
    for exercise in ("1.1", "1.2", "2.1", "2.2", "3.1", "3.2", "4.1", "4.2", "5.1", "5.2",
                     "6.1", "6.2"):
        assert f'solution("{exercise}"' in source, f"exercise {exercise} has no solution cell"


@pytest.mark.slow
def test_notebook_runs_with_its_solutions_in_smoke_size(tmp_path):
    executed = nbformat.read(ws.execute(tmp_path / "workshop.ipynb", solutions=True,
                                        smoke=True), as_version=4)
    text = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                   for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert "NOT YET" not in text and "NOT ANSWERED" not in text
    assert "exercises right: 12 of 12" in text
    assert text.count("[RIGHT]") >= 12


# ----------------------------------------------------------- checks never hand over the answer
# The model answer's code, per exercise (emerdiff_lab.workshop.solution): no "not yet" message
# may contain any of it. Predictions (1.2, 2.1, 3.2) are compared with a measurement, which the
# message reports; the others must not give their expected value either (EXPECTED below).
ANSWER_CODE = {
    "1.1": ["reshape(", "(3, 16, 4, 16, 4)", ".mean(dim=(2, 4))", "permute(1, 2, 0)"],
    "2.2": [".norm(", "norm(dim=0)", "pert.minus - pert.plus", "dim=0"],
    "3.1": ["diff[region].sum()", "diff.sum()", ".sum() /"],
    "4.1": ["validation_seeds(", "solution("],
    "4.2": ["max(scores", "scores.get"],
    "5.1": ["gaussian_blur(", ".argmax(0)", "argmax(dim=0)", "dim=0"],
    "5.2": ["hungarian_miou(pred", "hungarian_miou(emerdiff", ".miou)", "(pred, truth)"],
    "6.1": ["min(failure_table", "best_iou\"])"],
    "6.2": ["segments_inside\"]", "failure_table("],
}


def _not_yet_messages(scene, failure_case):
    """Every wrong-answer branch of every non-prediction check, with the expected values."""
    from emerdiff_lab.assembly import gaussian_blur

    image, labels = scene
    out = []                                            # (exercise, message, expected texts)
    colours = ws.solution("1.1", image=image)
    for answer in (colours.permute(2, 0, 1), colours[:8], image[:, ::4, ::4].permute(1, 2, 0),
                   colours * 16, colours + 0.1, "red"):
        out.append(("1.1", ws.check_cell_colours(answer, image), []))
    generator = torch.Generator().manual_seed(0)
    pert = SimpleNamespace(plus=torch.rand(3, 8, 8, generator=generator),
                           minus=torch.rand(3, 8, 8, generator=generator))
    delta = pert.minus - pert.plus
    for answer in (delta.pow(2).sum(0), delta.abs().mean(0), delta.sum(0), delta.norm(dim=1),
                   delta.norm(dim=0) * 2, delta):
        out.append(("2.2", ws.check_difference_map(answer, pert), []))
    cell = ws.interior_cell(labels, "sky")
    diff = _change_map(labels, cell)
    region = labels == ws.class_id("sky")
    share = ws.solution("3.1", diff=diff, region=region)
    for answer in (float(region.float().mean()), 1 - share, share * 0.5, share * 1.3, 2.0, "x"):
        out.append(("3.1", ws.check_class_share(answer, diff, region), [f"{share:.3f}"]))
    for answer in (ws.heldout_test_seeds(2), [0, 1], [VALIDATION_SEED_START + 1_000_000], []):
        out.append(("4.1", ws.check_sweep_seeds(answer), []))
    scores = {(281, 10.0): 0.52, (481, 10.0): 0.56, (481, 2.0): 0.50, (681, 2.0): 0.51}
    for answer in ((481, 2), (281, 10), (681, 2), (500, 10), 481):
        out.append(("4.2", ws.check_best_setting(answer, scores), ["0.560", "the best is"]))
    maps = torch.rand(4, 32, 32, generator=torch.Generator().manual_seed(0))
    for answer in (maps.argmax(0), gaussian_blur(maps, 1.0).argmin(0),
                   gaussian_blur(maps, 1.0).argmax(1), gaussian_blur(maps, 1.0).amax(0),
                   torch.zeros(32, 32, dtype=torch.int64)):
        out.append(("5.1", ws.check_assembly(answer, maps, 1.0), []))
    pred, truth = failure_case
    miou = ws.solution("5.2", pred=pred, truth=truth)
    for answer in (0.01, miou + 0.2, 1.5):
        out.append(("5.2", ws.check_miou(answer, pred, truth), [f"{miou:.3f}"]))
    for answer in ("sky", "sand", "house"):
        out.append(("6.1", ws.check_worst_class(answer, pred, truth), ["fence's"]))
    for answer in (1, 3, 5, "two"):
        out.append(("6.2", ws.check_split_count(answer, pred, truth, "sky"), ["expected 2"]))
    return out


def test_not_yet_messages_never_contain_the_model_answer(scene, failure_case):
    messages = _not_yet_messages(scene, failure_case)
    assert {e for e, _, _ in messages} == set(ANSWER_CODE)
    for exercise, check, expected in messages:
        assert check.status == "wrong", (exercise, check)
        for fragment in ANSWER_CODE[exercise] + expected:
            assert fragment not in check.message, \
                f"exercise {exercise}'s 'not yet' gives away {fragment!r}: {check.message}"
        assert len(check.message) > 20, check          # it still says what is wrong


def test_notebook_examples_are_neutral():
    """An example in an exercise's comment must not be a (right or wrong) ordering to copy."""
    nb = nbformat.read(ws.NOTEBOOK, as_version=4)
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    for line in source.splitlines():
        if "YOUR PREDICTION" in line or "YOUR ANSWER" in line:
            assert "e.g." not in line, line
