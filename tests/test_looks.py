"""TensorBoard events and prediction PNGs of every run, and the report's predictions section (issue 13).

The acceptance runs ``suites/camvid_smoke.yaml`` on the real CamVid, shortened with ``--set`` to two iterations.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from benchmark.__main__ import main
from benchmark.data.camvid import CLASS_NAMES as CAMVID_CLASSES
from benchmark.data.camvid import PALETTE as CAMVID_PALETTE
from benchmark.data.transforms import EvalTransform
from benchmark.data.voc import PALETTE as VOC_PALETTE
from benchmark.engine.board import RunBoard, folder_name
from benchmark.qualitative import (
    check_indices,
    default_indices,
    ignore_rgb,
    label_png,
    prediction_path,
    read_label_png,
    sample_paths,
)
from benchmark.registry import DATASETS, MODELS
from benchmark.store import load_records
from tests.conftest import CAMVID_ROOT
from tests.test_runner import MINI as RUNNER_MINI

ROOT = Path(__file__).resolve().parent.parent
SHORT = ["--set", f"dataset.root={CAMVID_ROOT}", "--set", "schedule.iterations=2", "--set", "schedule.log_every=1",
         "--set", "schedule.eval_every=1", "--set", "schedule.checkpoint_every=2",
         "--set", "teachers.teacher.schedule={iterations: 2}"]
URI = re.compile(r"data:image/png;base64,[A-Za-z0-9+/=]+")


def section(html: str, ident: str) -> str:
    start = html.index(f'<section id="{ident}">')
    return html[start:html.index("</section>", start)]


def scalars(folder: Path) -> dict[str, dict[int, float]]:
    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return {tag: {event.step: event.value for event in accumulator.Scalars(tag)}
            for tag in accumulator.Tags()["scalars"]}


def board_folder(run_folder: Path) -> Path:
    events = sorted(run_folder.glob("tb/**/events.out.tfevents.*"))
    assert events, f"no TensorBoard event file under {run_folder}/tb"
    assert len({e.parent for e in events}) == 1
    return events[0].parent


@pytest.fixture(scope="module")
def camvid(tmp_path_factory):
    base = tmp_path_factory.mktemp("camvid_smoke")
    code = main(["run", str(ROOT / "suites" / "camvid_smoke.yaml"), "--results", str(base / "results"),
                 "--reports", str(base / "reports"), *SHORT])
    assert code == 0
    return base / "results" / "camvid_smoke", base / "reports" / "camvid_smoke"


def test_every_run_folder_has_tensorboard_scalars(camvid):
    results, _ = camvid
    _, records, unfinished = load_records(results)
    assert len(records) == 2 and not unfinished
    teachers = [json.loads(p.read_text()) for p in results.glob("teachers/*/metrics.json")]
    assert len(teachers) == 1
    for record in records + teachers:
        folder = results / ("teachers" if record["role"] == "teacher" else "runs") / record["run_key"]
        board = board_folder(folder)
        values = scalars(board)
        for tag in ("loss/ce", "loss/total", "lr/student", "miou/val", "final/test/miou", "final/test/pixel_accuracy",
                    "best/test/miou"):
            assert tag in values, (record["role"], record.get("method"), tag, sorted(values))
        assert set(values["loss/total"]) == {1, 2}
        assert values["miou/val"] == pytest.approx({h["iteration"]: 100 * h["miou"] for h in record["history"]})
        assert values["final/test/miou"][2] == pytest.approx(100 * record["final"]["miou"])
        for name, iou in zip(CAMVID_CLASSES, record["final"]["per_class_iou"]):
            if np.isfinite(iou):
                assert values[f"final/test/iou/{name}"][2] == pytest.approx(100 * iou)
        if record["role"] == "teacher":
            assert board.relative_to(folder).as_posix() == "tb/teacher/teacher/tiny_teacher/seed0"
        else:
            assert board.relative_to(folder).as_posix() == f"tb/camvid_smoke/tiny_student/{record['method']}/seed0"
    kd = next(r for r in records if r["method"] == "kd")
    values = scalars(board_folder(results / "runs" / kd["run_key"]))
    assert "loss/kd.kd" in values  # every loss term by its name
    assert values["loss/total"][2] == pytest.approx(kd["last_losses"]["total"], rel=1e-5)


def test_runs_store_palette_pngs_of_the_same_images(camvid):
    results, _ = camvid
    _, records, _ = load_records(results)
    teacher = json.loads(next(results.glob("teachers/*/metrics.json")).read_text())
    blocks = [r["qualitative"] for r in records + [teacher]]
    assert all(b["indices"] == blocks[0]["indices"] for b in blocks)
    assert blocks[0]["indices"] == default_indices(8) == [1, 4, 6]  # subset 8 of the test split
    assert blocks[0]["palette"] == [list(c) for c in CAMVID_PALETTE]
    spec = DATASETS.get("camvid")
    test_set = spec.build("test", Path(CAMVID_ROOT), subset=8)
    model = MODELS.get("tiny_teacher")(spec.num_classes)
    model.load_state_dict(torch.load(results / "teachers" / teacher["run_key"] / "model.pt", weights_only=True))
    model.eval()
    for index in blocks[0]["indices"]:
        image, label = EvalTransform([90, 120])(*test_set[index])
        image_path, label_path = sample_paths(results / "samples" / blocks[0]["sample_key"], "test", index)
        assert np.array_equal(read_label_png(label_path), label.numpy().astype(np.uint8))
        with torch.inference_mode():
            expected = model(image[None]).argmax(1)[0].numpy()
        stored = read_label_png(prediction_path(results / "teachers" / teacher["run_key"], "test", index))
        assert np.array_equal(stored, expected)
        for record in records:
            assert prediction_path(results / "runs" / record["run_key"], "test", index).is_file()
        assert image_path.is_file()


def test_report_shows_predictions_with_the_camvid_legend(camvid):
    _, reports = camvid
    html = (reports / "index.html").read_text()
    predictions = section(html, "qualitative")
    assert len(URI.findall(predictions)) == 3 * 5  # 3 images x (image, ground truth, teacher, none, kd)
    header = re.search(r"<thead><tr>(.*?)</tr></thead>", predictions).group(1)
    assert re.findall(r"<th>(.*?)</th>", header) == ["#", "Image", "Ground truth", "Teacher (tiny_teacher)", "none",
                                                     "kd"]
    for name, rgb in zip(CAMVID_CLASSES, CAMVID_PALETTE):
        colour = "#" + "".join(f"{c:02x}" for c in rgb)
        assert f'background: {colour}"></span>{name}</li>' in predictions, name
    assert "Training curves" in html and 'alt="training curves' in html


def test_report_is_self_contained_and_rerenders_from_the_store_alone(camvid, tmp_path):
    results, reports = camvid
    html = (reports / "index.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html, re.IGNORECASE)
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=[\"'](?!data:|#)", html, re.IGNORECASE)
    assert "url(" not in html and "@import" not in html
    copy = tmp_path / "elsewhere" / "camvid_smoke"
    shutil.copytree(results, copy)
    for heavy in list(copy.rglob("*.pt")):  # no weights, no checkpoints: the report must not need them
        heavy.unlink()
    script = ("import sys; from benchmark.report import render_report; "
              f"render_report({str(copy)!r}, {str(tmp_path / 'again')!r}); "
              "assert 'torch' not in sys.modules, 'the report imported torch'")
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True, timeout=120)
    again = (tmp_path / "again" / "index.html").read_text()

    def content(text: str) -> str:
        return "\n".join(line for line in text.splitlines() if "generated-at" not in line)

    assert content(again) == content(html)


# --- the pieces --------------------------------------------------------------------------------------------------


def test_a_resumed_board_appends_and_hides_what_an_interrupted_attempt_logged_past_the_checkpoint(tmp_path):
    optimizer = torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)], "name": "student"},
                                 {"params": [torch.zeros(1, requires_grad=True)], "lr": 0.2}], lr=0.1)

    with RunBoard(tmp_path, "part/student/kd/seed0") as board:
        board.start(0)
        for step in (1, 2, 3, 4):
            board.training(step, {"total": float(step)}, optimizer)
    # TensorBoard orders event files by name: second, host, pid, then a per-process counter that sorts as text
    # (".10" before ".9"). A real resume is a later process in a later second; so is this one.
    time.sleep(1.01 - time.time() % 1)
    with RunBoard(tmp_path, "part/student/kd/seed0") as board:  # resumed from the checkpoint at iteration 2
        board.start(2)
        for step in (3, 4):
            board.training(step, {"total": 10.0 * step}, optimizer)
    values = scalars(tmp_path / "tb" / "part" / "student" / "kd" / "seed0")
    assert values["loss/total"] == {1: 1.0, 2: 2.0, 3: 30.0, 4: 40.0}
    assert values["lr/student"][4] == pytest.approx(0.1) and values["lr/group1"][4] == pytest.approx(0.2)
    disabled = RunBoard(tmp_path / "other", "x", enabled=False)
    disabled.start(0)
    disabled.training(1, {"total": 1.0}, optimizer)
    disabled.close()
    assert not (tmp_path / "other").exists()  # ranks other than 0 write nothing


def test_board_folder_names_are_readable_and_safe():
    assert folder_name("cirkd_camvid", "deeplabv3_r18", "cwd (feature) + kd", "seed3") == \
        "cirkd_camvid/deeplabv3_r18/cwd_feature_+_kd/seed3"
    assert folder_name("a/b", "..", "") == "a_b/_/_"


#: test_runner's synthetic suite without a teacher: one student, no distillation unless a test adds it.
MINI = {**{k: v for k, v in RUNNER_MINI.items() if k not in ("teachers", "claims")}, "methods": [{"name": "none"}]}


def run_mini(tmp_path: Path, data: dict) -> int:
    suite = tmp_path / "mini.yaml"
    suite.write_text(yaml.safe_dump(data))
    return main(["run", str(suite), "--results", str(tmp_path / "results"), "--reports", str(tmp_path / "reports")])


def test_a_checkpoint_teacher_stores_its_predictions_in_its_teacher_folder(tmp_path):
    weights = tmp_path / "teacher.pt"
    torch.save(MODELS.get("tiny_teacher")(7).state_dict(), weights)
    data = {**MINI, "teachers": {"t": {"model": "tiny_teacher", "checkpoint": str(weights)}},
            "methods": [{"name": "none"}, {"name": "kd"}], "report": {"qualitative_indices": [0, 5]}}
    assert run_mini(tmp_path, data) == 0
    results = tmp_path / "results" / "mini"
    (teacher,) = (results / "teachers").iterdir()
    assert not (teacher / "metrics.json").exists()  # loaded, not trained here: predictions only
    assert sorted(p.name for p in (teacher / "predictions").iterdir()) == ["val-0.png", "val-5.png"]  # synthetic evaluates on val
    predictions = section((tmp_path / "reports" / "mini" / "index.html").read_text(), "qualitative")
    assert "Teacher (tiny_teacher)" in predictions and "not stored" not in predictions
    assert len(URI.findall(predictions)) == 2 * 5


def test_a_failed_run_still_flushes_its_events(tmp_path, monkeypatch):
    from benchmark.engine import train

    def broken(*args, **kwargs):
        raise RuntimeError("evaluation broke")

    monkeypatch.setattr(train, "evaluate", broken)
    assert run_mini(tmp_path, MINI) == 1  # a failed run: exit 1
    (folder,) = (tmp_path / "results" / "mini" / "runs").iterdir()
    assert json.loads((folder / "status.json").read_text())["status"] == "failed"
    assert set(scalars(board_folder(folder))["loss/total"]) == {2}  # logged before the evaluation at 3 failed


def test_qualitative_indices_outside_the_split_stop_before_training(tmp_path, capsys):
    assert run_mini(tmp_path, {**MINI, "report": {"qualitative_indices": [2, 8]}}) == 2
    err = capsys.readouterr().err
    assert "report.qualitative_indices: [8] outside the evaluation split's 8 images (valid: 0..7)" in err
    assert not (tmp_path / "results" / "mini" / "runs").exists()


def test_no_indices_no_pngs(tmp_path):
    assert run_mini(tmp_path, {**MINI, "report": {"qualitative_indices": []}}) == 0
    (folder,) = (tmp_path / "results" / "mini" / "runs").iterdir()
    assert not (folder / "predictions").exists()
    assert json.loads((folder / "metrics.json").read_text())["qualitative"] is None
    assert "No predictions stored yet" in (tmp_path / "reports" / "mini" / "index.html").read_text()


def test_palette_pngs_and_indices():
    assert default_indices(233) == [38, 116, 194] and default_indices(2) == [0, 1]
    with pytest.raises(ValueError, match=r"where: \[-1, 9\] outside"):
        check_indices([0, -1, 9], 9, "where")
    assert ignore_rgb(CAMVID_PALETTE) == (0, 0, 0)  # void black, as SegNet and Cityscapes draw it
    assert ignore_rgb(VOC_PALETTE) == (224, 224, 192)  # VOC's background is black: its border colour
    label = np.array([[0, 1, 255], [2, 20, 0]], dtype=np.uint8)
    from io import BytesIO

    from PIL import Image

    with Image.open(BytesIO(label_png(label, VOC_PALETTE, 255, (2, 3)))) as image:
        assert image.mode == "P" and np.array_equal(np.asarray(image), label)
        rgb = np.asarray(image.convert("RGB"))
    assert tuple(rgb[0, 1]) == VOC_PALETTE[1] and tuple(rgb[0, 2]) == (224, 224, 192)
    with Image.open(BytesIO(label_png(np.zeros((400, 800), np.uint8), VOC_PALETTE, 255, (192, 384)))) as image:
        assert image.size == (384, 192)
