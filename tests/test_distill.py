"""tritonfleet distill: soft targets and the loss (pure), the teacher run from the repository's files
against the live ensemble, and a student trained, built, served and benchmarked end to end."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.special import log_softmax, softmax

from conftest import digits_spec_dict, write_spec


# --------------------------------------------------------------------------- pure parts
def test_soft_targets_are_the_teacher_probabilities_at_the_temperature():
    from tritonfleet.builder.lifecycle.distill.loss import soft_targets

    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, (32, 10))
    p = softmax(z, axis=1).astype(np.float32)
    assert np.allclose(soft_targets(p, 1.0), p, atol=1e-6)                      # T = 1 keeps them
    for t in (0.5, 2.0, 4.0):                                                  # = softmax(z / T) of any logits z
        q = soft_targets(p, t)
        assert np.allclose(q, softmax(z / t, axis=1), atol=1e-5)
        assert np.allclose(q.sum(1), 1, atol=1e-6) and (q.argmax(1) == p.argmax(1)).all()
    flat, sharp = soft_targets(p, 8.0), soft_targets(p, 0.25)
    assert (flat.max(1) < p.max(1)).all() and (sharp.max(1) >= p.max(1) - 1e-6).all()
    shares = np.array([[2 / 3, 1 / 3, 0.0]], dtype=np.float32)                   # hard-vote shares: zeros stay finite
    q = soft_targets(shares, 4.0)
    assert np.isfinite(q).all() and q[0, 0] > q[0, 1] > q[0, 2] > 0
    with pytest.raises(ValueError, match="temperature"):
        soft_targets(p, 0.0)


def test_distillation_loss_mixes_the_soft_and_the_hard_term():
    import torch

    from tritonfleet.builder.lifecycle.distill.loss import distillation_loss, distillation_loss_np, soft_targets

    rng = np.random.default_rng(1)
    s = rng.normal(0, 2, (16, 10))
    q = soft_targets(softmax(rng.normal(0, 3, (16, 10)), axis=1), 3.0)
    y = rng.integers(0, 10, 16)
    ce = -log_softmax(s, axis=1)[np.arange(16), y].mean()
    q64 = q.astype(np.float64)
    kl = (q64 * (np.log(q64) - log_softmax(s / 3.0, axis=1))).sum(1).mean()
    for alpha in (0.0, 0.3, 1.0):
        expected = alpha * 9.0 * kl + (1 - alpha) * ce
        assert distillation_loss_np(s, q, y, 3.0, alpha) == pytest.approx(expected, rel=1e-9)
        got = distillation_loss(torch.tensor(s, dtype=torch.float32), torch.tensor(q), torch.tensor(y), 3.0, alpha)
        assert float(got) == pytest.approx(expected, rel=1e-5)
    # a student that reproduces the soft targets at T has no soft loss left
    assert distillation_loss_np(3.0 * np.log(q), q, y, 3.0, 1.0) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("change, message", [
    ({"temperature": 0}, "distillation.temperature: Input should be greater than 0"),
    ({"alpha": 1.5}, "distillation.alpha: Input should be less than or equal to 1"),
    ({"temprature": 2.0}, "distillation.temprature: unknown field; did you mean 'temperature'?"),
    ({"student": {"architecture": "no_colon"}}, "distillation.student.architecture"),
    ({"name": "cnn_small_a"}, "distillation.name 'cnn_small_a' clashes with a model of the pipeline"),
    ({"precisions": ["fp32", "fp64"]}, "distillation.precisions[1]: Input should be 'fp32', 'fp16' or 'int8'"),
])
def test_distillation_block_is_validated(spec_factory, change, message):
    from tritonfleet.builder.errors import SpecError
    from tritonfleet.builder.spec import load_spec

    base = yaml.safe_load(spec_factory().read_text())["distillation"]
    with pytest.raises(SpecError) as info:
        load_spec(spec_factory(distillation={**base, **change}))
    assert message in str(info.value)


def test_distillation_needs_labelled_train_and_validation_splits(spec_factory, artifacts):
    from tritonfleet.builder.errors import SpecError
    from tritonfleet.builder.spec import load_spec

    data = {"path": str(artifacts / "digits.npz"), "test": {"inputs": "x_test", "labels": "y_test"},
            "validation": {"inputs": "x_val", "labels": "y_val"}, "train": {"inputs": "x_train"}}
    with pytest.raises(SpecError, match=r"distillation needs data.train with inputs and labels"):
        load_spec(spec_factory(data=data))


# --------------------------------------------------------------------------- the teacher is what is served
CLASSIFIERS = ("digits", "digits_weighted", "digits_stacking", "digits_geometric", "digits_vote", "digits_torch",
               "digits_rescore")


def test_teacher_from_the_repository_files_answers_as_the_served_ensemble(repository, triton, digits_data):
    from tritonfleet.builder.lifecycle.distill.teacher import load_teacher

    repo = repository["digits"][1].repository
    x = digits_data["x_test"][:96]
    with triton.client() as client:
        for name in CLASSIFIERS:
            teacher = load_teacher(repo, name)
            ours = teacher.run([x], batch_size=40)  # batches of another size than the server's
            served = client.infer_batched(name, x)
            assert ours.probabilities.shape == served["probabilities"].shape == (96, 10)
            np.testing.assert_allclose(ours.probabilities, served["probabilities"], rtol=1e-5, atol=1e-6,
                                       err_msg=name)
            assert (ours.classes == served["class_index"][:, 0]).all(), name
            assert set(ours.scores) == {s.model for s in teacher.steps if s.kind in ("onnx", "torchscript")}
            if name == "digits_torch":  # TorchScript members, run from the served model.pt
                assert {s.kind for s in teacher.steps} >= {"torchscript", "fusion"}
    with triton.client() as client:  # the members' scores are the served members' outputs
        for member, scores in ours.scores.items():
            np.testing.assert_allclose(scores, client.infer_batched(member, x)["logits"], rtol=1e-5, atol=1e-5)


def test_the_teacher_of_an_ngc_repository_runs_its_onnxruntime_members(local_build, ngc_build, digits_data):
    from tritonfleet.builder.lifecycle.distill.teacher import load_teacher

    x = digits_data["x_test"][:64]
    teacher = load_teacher(ngc_build[1].repository, "digits")
    assert "onnx" in {s.kind for s in teacher.steps} and {s.kind for s in teacher.steps} <= {"onnx", "fusion", "guard"}
    local = load_teacher(local_build[1].repository, "digits").run([x])
    np.testing.assert_allclose(teacher.run([x]).probabilities, local.probabilities, rtol=1e-5, atol=1e-6)


def test_teacher_refuses_what_is_not_a_classification_ensemble(repository):
    from tritonfleet.builder.errors import RepositoryError
    from tritonfleet.builder.lifecycle.distill.teacher import load_teacher

    repo = repository["digits"][1].repository
    with pytest.raises(RepositoryError, match="not an ensemble"):
        load_teacher(repo, "digits_cascade")
    with pytest.raises(RepositoryError, match="pipeline 'nope' is not built"):
        load_teacher(repo, "nope")


# --------------------------------------------------------------------------- end to end
def cli(*args: str) -> tuple[int, str]:
    """``tritonfleet ARGS`` in-process: (exit code, stdout + stderr)."""
    from tritonfleet.builder.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main([str(a) for a in args])
    return code, out.getvalue()


def tree(repo: Path) -> dict[str, bytes]:
    return {str(p.relative_to(repo)): p.read_bytes() for p in sorted(repo.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(artifacts, tmp_path_factory):
    """A two-member digits ensemble (fp32) built into its own repository, then distilled: once with a
    learning rate too small to learn (refused), once for real (fp32 + fp16 student)."""
    from tritonfleet.builder.build import build
    from tritonfleet.builder.spec import load_spec

    folder = tmp_path_factory.mktemp("distill")
    raw = digits_spec_dict(artifacts, folder / "model_repository")
    raw["members"] = raw["members"][:2]
    raw["baselines"] = []
    raw["precision"] = {"variants": ["fp32"]}
    raw["parity"]["samples"] = 64
    raw["serving"].pop("compile", None)  # the ensemble alone: no compiled twin to build
    raw["distillation"].update(epochs=12, precisions=["fp32", "fp16"])
    spec = write_spec(folder / "digits.yaml", raw)
    build(load_spec(spec), spec_path=spec, progress=False)
    repo = folder / "model_repository"
    built = tree(repo)

    bad = write_spec(folder / "bad.yaml", {**raw, "distillation": {**raw["distillation"], "learning_rate": 1e-7}})
    refused = cli("distill", bad, "--no-progress", "--epochs", "1")
    after_refusal = tree(repo)
    done = cli("distill", spec, "--no-progress")
    return {"spec": spec, "raw": raw, "repo": repo, "built": built, "refused": refused,
            "after_refusal": after_refusal, "done": done, "folder": folder}


def test_a_student_that_did_not_learn_is_refused_and_the_repository_unchanged(small):
    code, out = small["refused"]
    assert code == 1, out
    assert "student digits_student did not learn: validation top-1" in out
    assert "is below the worst member's (cnn_small_" in out and "repository is unchanged" in out
    assert "Traceback" not in out
    assert small["after_refusal"] == small["built"]


def test_distill_builds_the_student_beside_the_untouched_ensemble(small):
    from tritonfleet.builder.repository.verify import verify
    from tritonfleet.clients.manifest import Manifest

    code, out = small["done"]
    assert code == 0, out
    assert "teacher digits (served files, in-process)" in out and "digits_student_fp16" in out
    repo = small["repo"]
    manifest = Manifest.read(repo)
    for name, precision in (("digits_student", "fp32"), ("digits_student_fp16", "fp16")):
        rec = manifest.models[name]
        assert (rec.kind, rec.member, rec.precision, rec.owners, rec.version) == (
            "student", "digits_student", precision, ("digits_student",), 1)
        assert rec.parity and all(p["passed"] for p in rec.parity)
        assert rec.raw["student"]["teacher"]["pipeline"] == "digits"
    student = manifest.pipelines["digits_student"].raw["student"]
    assert student["learnt"] and not student["forced"]
    assert student["val_accuracy"] >= min(student["members_val_accuracy"].values())
    now = tree(repo)  # the ensemble, its fusion step and members: byte for byte as built
    assert {k: v for k, v in now.items() if not k.startswith("digits_student") and k != "manifest.json"} == \
           {k: v for k, v in small["built"].items() if k != "manifest.json"}
    report = verify(repo)
    assert report.ok, report.problems
    checkpoint = small["folder"] / ".tritonfleet" / "distill" / "digits_student.pt"
    assert checkpoint.is_file() and json.loads(checkpoint.with_suffix(".json").read_text())["learnt"] is True


@pytest.fixture(scope="module")
def small_server(small):
    from tritonfleet.clients.server import TritonServer

    with TritonServer(small["repo"]) as server:
        yield server


def test_the_served_student_answers_as_its_pytorch_model(small, small_server, digits_data):
    import torch

    from tritonfleet.examples.digits.models import StudentCNN

    model = StudentCNN(**small["raw"]["distillation"]["student"]["kwargs"]).eval()
    model.load_state_dict(torch.load(small["folder"] / ".tritonfleet" / "distill" / "digits_student.pt",
                                     weights_only=True))
    x, y = digits_data["x_test"], digits_data["y_test"]
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    with small_server.client() as client:
        fp32 = client.infer_batched("digits_student", x)["logits"]
        fp16 = client.infer_batched("digits_student_fp16", x)["logits"]
        ensemble = client.infer_batched("digits", x)["class_index"][:, 0]
    np.testing.assert_allclose(fp32, reference, rtol=1e-3, atol=1e-4)
    assert np.abs(fp16 - reference).max() < 5e-2 and (fp16.argmax(1) == reference.argmax(1)).mean() >= 0.98
    accuracy = (fp32.argmax(1) == y).mean()
    student = json.loads((small["repo"] / "manifest.json").read_text())["pipelines"]["digits_student"]["student"]
    assert accuracy == pytest.approx(student["test_accuracy"], abs=1 / len(y))
    assert (ensemble == y).mean() == pytest.approx(student["teacher"]["test_accuracy"], abs=1e-9)


def test_bench_and_report_show_the_student(small, small_server, tmp_path):
    out = tmp_path / "bench.json"
    code, text = cli("bench", small["repo"], "--url", small_server.url("grpc"), "--models", "digits_student,digits",
                     "--concurrency", "1", "--window", "0.2", "--max-windows", "3", "--out", out, "--no-progress")
    assert code == 0, text
    kinds = {m["model"]: m["kind"] for m in json.loads(out.read_text())["models"]}
    assert kinds == {"digits_student": "student", "digits": "ensemble"}
    code, text = cli("report", out)
    assert code == 0, text
    assert "| digits_student | student | fp32 |" in (tmp_path / "report.md").read_text()


def test_a_rebuild_keeps_the_student_and_a_new_student_is_version_2(small):
    from tritonfleet.builder.repository.verify import verify
    from tritonfleet.clients.manifest import Manifest

    repo, spec = small["repo"], small["spec"]
    before = {k: v for k, v in tree(repo).items() if k.startswith("digits_student")}
    code, out = cli("build", spec, "--no-progress")
    assert code == 0 and "removed models" not in out, out
    assert "learnt from an earlier" not in out  # the teacher did not change: the student is not stale
    assert {k: v for k, v in tree(repo).items() if k.startswith("digits_student")} == before
    other = write_spec(small["folder"] / "seed1.yaml",
                       {**small["raw"], "distillation": {**small["raw"]["distillation"], "seed": 1}})
    code, out = cli("distill", other, "--no-progress")
    assert code == 0, out
    rec = Manifest.read(repo).models["digits_student"]
    assert rec.version == 2 and sorted(rec.raw["versions"]) == ["1", "2"] and (repo / "digits_student" / "2").is_dir()
    assert verify(repo).ok


def test_a_student_of_a_changed_ensemble_is_reported_stale(small, tmp_path):
    import shutil

    from tritonfleet.builder.lifecycle.distill import stale_students

    copy = tmp_path / "model_repository"
    shutil.copytree(small["repo"], copy)
    assert stale_students(copy, "digits") == []
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["models"]["cnn_small_a"]["files"]["1/model.onnx"] = "0" * 64  # as if the member had been rebuilt
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert stale_students(copy, "digits") == [
        "student 'digits_student' learnt from an earlier 'digits' ensemble (its members or fusion changed since); "
        "it is kept as it is: run 'tritonfleet distill' on the spec again to retrain it"]
