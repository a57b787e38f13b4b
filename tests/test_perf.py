"""``perf``: the plain loop computes the harness's method, the command prints both times and their ratio, and a
compiled student keeps its hooks and its loss. Nothing here times anything for a claim (that is ``perf`` itself)."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

from benchmark.__main__ import main
from benchmark.engine import train
from benchmark.engine.step import step_losses, student_capture
from benchmark.models.hooks import FeatureCapture
from benchmark.perf import KD_POINT, PHASES, PerfSetting, bf16_peak, plain_loop, run_perf
from benchmark.registry import MODELS
from benchmark.store import load_records
from methods.base import Batch


def test_the_plain_loop_takes_the_harness_step():
    """Same initial student, batch and optimizer: one plain step and one harness step (step_losses, the task terms
    and the method's) leave the same weights, so the two sides of ``perf`` train the same thing."""
    torch.manual_seed(0)
    student = MODELS.get("deeplabv3_r18")(11)
    assert student.aux_weight > 0, "the check needs the auxiliary head's CE"
    teacher = MODELS.get("deeplabv3_r18")(11).eval().requires_grad_(False)
    twin = copy.deepcopy(student)
    images, labels = torch.randn(2, 3, 64, 64), torch.randint(0, 11, (2, 64, 64))
    labels[0, :8] = 255

    def sgd(model):
        return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)

    plain_optimizer = sgd(twin)
    torch.manual_seed(1)  # the same dropout masks on both sides
    plain_loop(twin, teacher, itertools.repeat((images, labels)), plain_optimizer,
               torch.optim.lr_scheduler.LambdaLR(plain_optimizer, lambda it: 1.0), 1, torch.device("cpu"),
               temperature=2.0, ignore_index=255, bf16=False, channels_last=False)

    method = train.build_method([{"name": "kd", "hparams": {"point": KD_POINT, "temperature": 2.0}}], student,
                                teacher)
    optimizer = sgd(student)
    torch.manual_seed(1)
    with student_capture(student, method) as hooks, FeatureCapture(teacher, method.teacher_points) as capture:
        terms, _, _ = step_losses(student, teacher, method, hooks, capture, Batch(images, labels, 0, 1, 1, 255))
    assert set(terms) == {"ce", "aux_ce", "kd.kd"}
    sum(terms.values()).backward()
    optimizer.step()
    for (name, ours), theirs in zip(student.state_dict().items(), twin.state_dict().values()):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6, msg=name)


def test_perf_prints_both_times_their_ratio_and_the_phases(capsys):
    setting = PerfSetting(student="tiny_student", teacher="tiny_teacher", dataset="synthetic", root=None,
                          crop=(32, 32), batch_size=2, iterations=2, repeats=2, device="cpu", num_workers=[0, 1])
    results = run_perf(setting)
    out = capsys.readouterr().out
    assert out.count("harness/plain") == 2 * 2 + 2, out  # every repeat, and the median, per worker count
    assert "num_workers sweep:" in out and results["workers_needed"] in (0, 1)
    for run in results["runs"]:
        assert len(run["ratios"]) == 2 and all(r > 0 for r in run["ratios"])
        assert run["median_ratio"] == pytest.approx(sum(run["ratios"]) / 2)
    for phase in PHASES:
        assert phase in out and results["phases"][phase] > 0
    assert "MFU" not in out, "utilisation is a GPU number"


def test_perf_rejects_bad_input_before_measuring(capsys, tmp_path):
    assert main(["perf", "--batch", "0"]) == 2
    assert "--batch must be >= 1" in capsys.readouterr().err
    assert main(["perf", "--root", str(tmp_path / "nowhere"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "camvid" in err and "nowhere" in err and "--dataset synthetic" in err


def test_the_sync_audit_watches_exactly_the_timed_iterations(monkeypatch):
    """CUDA's sync debug mode is on from the logging line of iteration N to that of 2N, and each sync's warning is
    counted by where it happened (a CPU stands in: the mode switch and the warnings are faked)."""
    import logging
    import warnings

    from benchmark import perf
    from benchmark.engine.train import ITERATION_LOG

    modes = []
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)

    def fake_harness(bench, teacher, workers, compiled, clock):
        for iteration in range(1, 7):
            if modes and modes[-1] == "warn":
                warnings.warn("called a synchronizing CUDA operation", UserWarning, stacklevel=1)
            clock.emit(logging.LogRecord("t", logging.INFO, __file__, 0, ITERATION_LOG,
                                         ("perf", iteration, 6, 0.1, ""), None))
        return 0.0

    monkeypatch.setattr(perf, "_harness", fake_harness)
    bench = type("B", (), {"setting": PerfSetting(iterations=3)})()
    places = perf.sync_audit(bench, None, 0)
    assert modes == ["warn", "default", "default"]  # on at 3, off at 6, and off again however it ends
    assert sum(places.values()) == 3 and all(place.startswith(__file__) for place in places)  # iterations 4, 5, 6


def test_bf16_peaks_by_device_name():
    assert bf16_peak("NVIDIA H100 PCIe")[0] == 756.0
    assert bf16_peak("NVIDIA H100 80GB HBM3")[0] == 989.0
    assert bf16_peak("NVIDIA A100-SXM4-80GB")[0] == 312.0
    assert bf16_peak("NVIDIA L40S")[0] == 362.0 and bf16_peak("NVIDIA L4")[0] == 121.0
    assert bf16_peak("Some Future GPU") == (None, "Some Future GPU")
    assert bf16_peak("Some Future GPU", 500.0)[0] == 500.0


# torch.compile: "aot_eager" traces with dynamo and AOT autograd as inductor does, without generating code, so the
# hooks and the loss are checked in seconds; `python -m benchmark perf --compile --dataset synthetic --student
# tiny_student --teacher tiny_teacher --device cpu` checks the same with inductor (minutes on two cores).


def test_a_compiled_student_keeps_its_hooks_and_its_loss(monkeypatch):
    monkeypatch.setattr(train, "COMPILE_BACKEND", "aot_eager")
    torch.manual_seed(0)
    student = MODELS.get("tiny_student")(7)
    teacher = MODELS.get("tiny_teacher")(7).eval().requires_grad_(False)
    compiled = copy.deepcopy(student)
    train.compile_in_place(compiled, {"compile": True})
    batch = Batch(torch.randn(2, 3, 32, 32), torch.randint(0, 7, (2, 32, 32)), 0, 1, 1, 255)
    results = {}
    for name, model in (("eager", student), ("compiled", compiled)):
        torch.manual_seed(1)
        method = train.build_method([{"name": "kd", "hparams": {"point": KD_POINT}}, {"name": "lgad", "hparams": {}}],
                                    model, teacher)
        with student_capture(model, method) as hooks, FeatureCapture(teacher, method.teacher_points) as capture:
            terms, features, _ = step_losses(model, teacher, method, hooks, capture, batch)
        sum(terms.values()).backward()
        results[name] = terms, features, [p.grad for p in model.parameters()]
    (terms, features, grads), (c_terms, c_features, c_grads) = results["eager"], results["compiled"]
    assert compiled._compiled_call_impl is not None, "compiled in place"
    assert set(c_features) == set(features) == {"decoder", "logits", KD_POINT}
    for point in features:
        torch.testing.assert_close(c_features[point], features[point], rtol=1e-4, atol=1e-5)
    assert c_terms.keys() == terms.keys()
    for term in terms:
        torch.testing.assert_close(c_terms[term], terms[term], rtol=1e-4, atol=1e-6)
    for ours, theirs in zip(c_grads, grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-5)


def test_runtime_compile_trains_a_run_with_eager_checkpoints(tmp_path, monkeypatch):
    """runtime.compile goes through the loop (FLOPs counted too); its checkpoint loads into an eager model (no
    ``_orig_mod.`` keys)."""
    import yaml

    monkeypatch.setattr(train, "COMPILE_BACKEND", "aot_eager")
    suite = {
        "name": "mini",
        "dataset": {"name": "synthetic", "crop": [32, 32], "scale_range": [1.0, 1.0],
                    "options": {"image_size": 32, "num_train": 8, "num_val": 4, "num_test": 4}},
        "schedule": {"iterations": 2, "batch_size": 4, "lr": 0.01, "eval_batch_size": 4, "checkpoint_every": 2,
                     "log_every": 1},
        "students": [{"model": "tiny_student"}],
        "methods": [{"name": "none"}],
        "seeds": [0],
        "runtime": {"compile": True},
        "report": {"qualitative_indices": []},
    }
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump(suite))
    assert main(["run", str(path), "--results", str(tmp_path / "results"), "--reports", str(tmp_path / "rep")]) == 0
    _, (record,), _ = load_records(tmp_path / "results" / "mini")
    assert record["status"] == "done" and record["cost"]["flops"] > 0  # counted on the eager call
    state = torch.load(tmp_path / "results" / "mini" / "runs" / record["run_key"] / "checkpoint.pt",
                       weights_only=True)
    MODELS.get("tiny_student")(7).load_state_dict(state["model"], strict=True)
