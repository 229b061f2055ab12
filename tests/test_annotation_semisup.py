import json
import uuid

import fsspec
import numpy as np
import pytest
import torch

from ecos_core.labeling.annotation import LabelImportError, export_for_annotation, import_labels, render_images
from ecos_core.training.semisup import FixMatch, FixMatchConfig, strong_augment, train_fixmatch
from ecos_core.training.train import TrainConfig, accuracy, train_classifier
from tests.conftest import make_imageset

IDS = np.array(["mnist/000001", "mnist/000002", "svhn/000007"])


def _url(ext: str) -> str:
    return f"memory://annot-{uuid.uuid4().hex}/labels.{ext}"  # fresh per test: memory:// is process-global


def _write(url: str, text: str) -> str:
    with fsspec.open(url, "w") as fh:
        fh.write(text)
    return url


# --------------------------------------------------------------------------- export / import round trip


@pytest.mark.parametrize("ext", ["csv", "json"])
def test_export_then_import_round_trip(ext):
    url = _url(ext)
    export_for_annotation(IDS, ["a.png", "b.png", "c.png"], url)
    with fsspec.open(url, "r") as fh:
        text = fh.read()
    if ext == "csv":
        lines = text.splitlines()
        assert lines[0] == "sample_id,image_uri,label" and lines[1] == "mnist/000001,a.png,"
        filled = "\n".join(lines[:1] + [f"{line}{k}" for k, line in zip([3, 0, 9], lines[1:])])
    else:
        rows = json.loads(text)
        assert rows[2] == {"sample_id": "svhn/000007", "image_uri": "c.png", "label": None}
        for row, k in zip(rows, [3, 0, 9]):
            row["label"] = k
        filled = json.dumps(rows[::-1])  # file order need not match the export order
    _write(url, filled)
    labels = import_labels(url, IDS)
    assert labels.dtype == np.int64 and labels.tolist() == [3, 0, 9]


def test_export_without_uris_and_bad_arguments():
    url = _url("csv")
    export_for_annotation(IDS, None, url)
    with fsspec.open(url, "r") as fh:
        assert fh.read().splitlines()[1] == "mnist/000001,,"
    with pytest.raises(ValueError, match=r"labels\.txt.*unsupported"):
        export_for_annotation(IDS, None, "memory://x/labels.txt")
    bad_url = _url("csv")
    with pytest.raises(ValueError, match="2 image uris for 3"):
        export_for_annotation(IDS, ["a", "b"], bad_url)
    with pytest.raises(ValueError, match="duplicate"):
        export_for_annotation(np.array(["a", "a"]), None, bad_url)
    assert not fsspec.filesystem("memory").exists(bad_url)  # nothing written on failure


def test_csv_keeps_id_spelling_and_accepts_whole_floats_in_json():
    ids = np.array(["007", "10"])
    assert import_labels(_write(_url("csv"), "label,sample_id\n 1 ,007\n2,10\n"), ids).tolist() == [1, 2]
    rows = [{"sample_id": "007", "label": 4.0}, {"sample_id": "10", "label": "5"}]
    assert import_labels(_write(_url("json"), json.dumps(rows)), ids).tolist() == [4, 5]


# --------------------------------------------------------------------------- import validation

CSV_CASES = {
    "unknown": ("sample_id,label\nmnist/000001,1\nmnist/000002,2\nsvhn/000007,3\nghost/1,4\n", "unknown", ["ghost/1"]),
    "missing row": ("sample_id,label\nmnist/000001,1\nmnist/000002,2\n", "no label", ["svhn/000007"]),
    "empty cell": ("sample_id,label\nmnist/000001,1\nmnist/000002,\nsvhn/000007,3\n", "no label", ["mnist/000002"]),
    "duplicate": (
        "sample_id,label\nmnist/000001,1\nmnist/000001,1\nmnist/000002,2\nsvhn/000007,3\n",
        "duplicate",
        ["mnist/000001"],
    ),
    "out of range": (
        "sample_id,label\nmnist/000001,10\nmnist/000002,-1\nsvhn/000007,3\n",
        r"0\.\.9",
        ["mnist/000001", "mnist/000002"],
    ),
    "non-integer": (
        "sample_id,label\nmnist/000001,3.5\nmnist/000002,cat\nsvhn/000007,3\n",
        "integers",
        ["mnist/000001", "mnist/000002"],
    ),
    "missing column": ("sample_id,klass\nmnist/000001,1\n", "missing columns", []),
    "empty file": ("", "unparsable", []),
    "ragged": ('sample_id,label\n"mnist/000001,1\n', "unparsable", []),
}


@pytest.mark.parametrize("case", list(CSV_CASES))
def test_import_csv_rejects(case):
    text, message, ids = CSV_CASES[case]
    url = _write(_url("csv"), text)
    with pytest.raises(LabelImportError, match=message) as info:
        import_labels(url, IDS)
    assert url.split("/")[-2] in str(info.value) and info.value.path == url  # names the file
    assert info.value.ids == ids and all(i in str(info.value) for i in ids)


JSON_CASES = {
    "not json": ("[{", "unparsable"),
    "not a list": ('{"sample_id": "a"}', "unparsable"),
    "missing key": ('[{"sample_id": "mnist/000001"}]', "missing columns"),
    "bool label": (json.dumps([{"sample_id": i, "label": True} for i in IDS]), "integers"),
    "null label": (json.dumps([{"sample_id": i, "label": None} for i in IDS]), "no label"),
}


@pytest.mark.parametrize("case", list(JSON_CASES))
def test_import_json_rejects(case):
    text, message = JSON_CASES[case]
    url = _write(_url("json"), text)
    with pytest.raises(LabelImportError, match=message):
        import_labels(url, IDS)


def test_import_missing_file_and_bad_classes():
    with pytest.raises(LabelImportError, match="not found"):
        import_labels(_url("csv"), IDS)
    url = _write(_url("csv"), "sample_id,label\nmnist/000001,3\nmnist/000002,2\nsvhn/000007,3\n")
    with pytest.raises(LabelImportError, match=r"0\.\.2"):
        import_labels(url, IDS, classes=3)
    assert import_labels(url, IDS, classes=4).tolist() == [3, 2, 3]


def test_render_images_writes_pngs(tmp_path):
    from PIL import Image

    toy = make_imageset(3)
    uris = render_images(toy.images, toy.ids, str(tmp_path / "png"))
    assert len(uris) == 3 and uris[0].endswith("toy__000000.png")
    assert np.array_equal(np.asarray(Image.open(uris[1])), toy.images[1])
    mem = render_images(toy.images[:1], toy.ids[:1], f"memory://render-{uuid.uuid4().hex}")
    assert mem[0].startswith("memory://") and fsspec.filesystem("memory").exists(mem[0])
    with pytest.raises(ValueError, match="uint8"):
        render_images(toy.images.astype(np.float32), toy.ids, str(tmp_path))


# --------------------------------------------------------------------------- FixMatch

# The toy encodes the label by bar position, so no translation in either view; jitter and cutout stay.
TOY_TRAIN = TrainConfig(max_epochs=40, max_steps=40, batch_size=20, max_shift=0.0, width=16)
TOY_FM = FixMatchConfig(train=TOY_TRAIN, strong_shift=0.0, threshold=0.9)


@pytest.fixture(scope="module")
def toy_semisup():
    return make_imageset(20, seed=0), make_imageset(300, seed=2).images, make_imageset(200, seed=1)


def test_strong_augment_jitters_and_erases():
    x = torch.from_numpy(np.linspace(-1, 1, 2 * 3 * 28 * 28, dtype=np.float32)).view(2, 3, 28, 28)
    off = FixMatchConfig(strong_shift=0, brightness=0, contrast=0, cutout=0)
    assert torch.allclose(strong_augment(x, off), x, atol=1e-6)  # every part can be switched off
    torch.manual_seed(0)
    out = strong_augment(x, FixMatchConfig(strong_shift=0, cutout=0.3))
    assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1
    assert not torch.allclose(out, x)
    erased = (out == 0).all(dim=1)  # cutout fills mid-grey (0 in [-1, 1]) across channels
    assert all(erased[i].sum() > 0 for i in range(2))


def test_fixmatch_learns_is_deterministic_and_records_mask_rate(toy_semisup):
    labeled, unlabeled, test = toy_semisup
    a, b = train_fixmatch(labeled, unlabeled, TOY_FM, seed=0), train_fixmatch(labeled, unlabeled, TOY_FM, seed=0)
    assert isinstance(a.model, FixMatch) and a.steps == 40 and a.epochs == 40  # 1 labelled batch per epoch
    assert 0.0 <= a.mask_rate <= 1.0 and len(a.model.mask_rates) == 40
    assert all(0.0 <= m <= 1.0 for m in a.model.mask_rates) and max(a.model.mask_rates) > 0  # pseudo labels kick in
    assert a.final_loss == pytest.approx(b.final_loss) and a.model.mask_rates == b.model.mask_rates
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert np.array_equal(pa.detach().numpy(), pb.detach().numpy())
    acc = accuracy(a.model, test)
    baseline = accuracy(train_classifier(labeled, TOY_TRAIN, seed=0).model, test)
    assert acc > 0.3  # chance is 0.1
    assert acc >= baseline - 0.25  # generous: both were 0.875 on torch 2.13 CPU


def test_fixmatch_threshold_zero_keeps_every_pseudo_label(toy_semisup):
    labeled, unlabeled, _ = toy_semisup
    cfg = FixMatchConfig(train=TOY_TRAIN.model_copy(update={"max_steps": 2}), threshold=0.0, mu=1)
    result = train_fixmatch(labeled, unlabeled[:5], cfg, seed=3)
    assert result.steps == 2 and result.mask_rate == 1.0


def test_fixmatch_rejects_bad_input(toy_semisup):
    labeled, unlabeled, _ = toy_semisup
    with pytest.raises(ValueError, match="labeled: .*empty"):
        train_fixmatch(make_imageset(0), unlabeled, TOY_FM)
    with pytest.raises(ValueError, match="unlabeled_images: .*uint8.*float32"):
        train_fixmatch(labeled, unlabeled.astype(np.float32), TOY_FM)
    with pytest.raises(ValueError, match="unlabeled_images: .*uint8"):
        train_fixmatch(labeled, unlabeled[..., 0], TOY_FM)
    with pytest.raises(ValueError, match="unlabeled_images: empty"):
        train_fixmatch(labeled, unlabeled[:0], TOY_FM)
    with pytest.raises(ValueError, match="unlabeled_images: shape"):
        train_fixmatch(labeled, unlabeled[:, :14, :14], TOY_FM)
    bad = make_imageset(4)
    bad.labels[0] = 10
    with pytest.raises(ValueError, match="labeled: labels"):
        train_fixmatch(bad, unlabeled, TOY_FM)
    with pytest.raises(ValueError):  # pydantic: threshold is a probability
        FixMatchConfig(threshold=1.5)
