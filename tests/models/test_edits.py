"""Edits: composition, identity at strength 0, clear errors, bundle round trips of every kind, fitted directions
on a planted linear toy, the pose/expression network on a tiny case, keep_mouth, face measures, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models.bundle import load_bundle, new_bundle
from models.editing import (
    PARAMS,
    EditContext,
    EditSpec,
    EditStack,
    PoseExpressionNet,
    parse_edit_args,
    tensor_key,
)
from models.errors import UserError
from realtime import cli
from training.directions import (
    EncodedSet,
    LinearFit,
    interfacegan_directions,
    merge_into_bundle,
    random_identity_direction,
    supervised_directions,
)
from training.measures import MEASURES, face_measures
from training.pose_expression import PETrainConfig, train_pose_expression

torch.set_num_threads(1)
NUM_WS, W_DIM = 10, 64  # tiny-64


def _pe_tensors(num_layers: int = 8, seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    torch.manual_seed(seed)
    net = PoseExpressionNet(num_layers, W_DIM, hidden=16)
    torch.nn.init.normal_(net.lin.weight, std=0.1)
    torch.nn.init.normal_(net.mlp[4].weight, std=0.05)
    t = net.to_extra()
    t["pose_expression.w_readout.weight"] = torch.randn(len(PARAMS), num_layers * W_DIM) * 0.05
    t["pose_expression.w_readout.bias"] = torch.zeros(len(PARAMS))
    t["pose_expression.lm_readout.weight"] = torch.randn(len(PARAMS), 936) * 0.01
    t["pose_expression.lm_readout.bias"] = torch.zeros(len(PARAMS))
    return t, net.config()


def _all_kinds_bundle() -> tuple[object, list[EditSpec]]:
    b = new_bundle("tiny-64", None, seed=0)
    pe, cfg = _pe_tensors()
    basis = torch.zeros(2, NUM_WS * W_DIM)
    basis[0, 3] = 1.0
    basis[1, W_DIM + 5] = 1.0
    tensors = {tensor_key("smile"): torch.randn(NUM_WS, W_DIM), tensor_key("tint"): torch.randn(W_DIM),
               tensor_key("random_identity"): torch.randn(NUM_WS, W_DIM), tensor_key("keep_mouth", "basis"): basis,
               **pe}
    specs = [
        EditSpec("smile", "w_direction", "smile", extra={"measure": "smile"}),
        EditSpec("tint", "w_direction", "fine-layer tint", layers=[8, 9], extra={"keep_mouth": False}),
        EditSpec("mouth_style", "style_channel", "lip colour", style_layer="b32.conv0", channel=3, scale=0.5),
        EditSpec("random_identity", "random_identity", "privacy", layers=[5, 6, 7, 8, 9], range=(0.0, 3.0)),
        EditSpec("yaw_to_15", "pose_expression", "yaw to 15", range=(0.0, 1.5),
                 extra={"target": {"yaw": 15.0}, "net": cfg}),
        EditSpec("keep_mouth", "keep_mouth", "keep the mouth", range=(0.0, 1.0)),
    ]
    merge_into_bundle(b, specs, tensors)
    return b, specs


# ------------------------------------------------------------------------------------------------ the stack


def test_strength_zero_is_identity_and_composition_adds_up():
    b, _ = _all_kinds_bundle()
    stack = EditStack.from_bundle(b)
    ws = torch.randn(3, NUM_WS, W_DIM)
    out, deltas = stack.apply(ws)
    assert out is ws and deltas is None and not stack.active()
    stack.set_strengths({"smile": 0.0, "tint": 0.0})
    assert stack.apply(ws)[0] is ws
    stack.set_strengths({"smile": 1.5, "tint": -2.0, "mouth_style": 2.0})
    out, deltas = stack.apply(ws)
    exp = ws + 1.5 * b.extra[tensor_key("smile")]
    exp[:, 8:] += -2.0 * b.extra[tensor_key("tint")]
    assert torch.allclose(out, exp, atol=1e-6)
    assert deltas is not None and set(deltas) == {"b32.conv0"}
    sd = deltas["b32.conv0"]
    assert torch.allclose(sd[:, 3], torch.full((3,), 1.0)) and sd.abs().sum() == 3.0
    # composing is order-free and equals the sum of the single edits
    single = []
    for name, k in (("smile", 1.5), ("tint", -2.0)):
        stack.set_strengths({name: k}, reset=True)
        single.append(stack.apply(ws)[0] - ws)
    assert torch.allclose(ws + single[0] + single[1], out, atol=1e-5)
    # a strength outside the edit's listed range is a clear error, not silently clamped
    with pytest.raises(UserError, match=r"random_identity: strength -5 is outside its range \[0, 3\]"):
        stack.set_strength("random_identity", -5)
    with pytest.raises(UserError, match="outside its range"):
        stack.set_strength("smile", float("nan"))
    assert stack.strengths()["random_identity"] == 0.0


def test_unknown_edit_names_give_a_clear_error():
    b, _ = _all_kinds_bundle()
    stack = EditStack.from_bundle(b)
    with pytest.raises(UserError, match="unknown edit 'frown'; available: smile, tint"):
        stack.set_strength("frown", 1.0)
    with pytest.raises(UserError, match="unknown edit 'frown'"):
        stack.set_strengths({"smile": 1.0, "frown": 1.0})
    assert stack.strengths()["smile"] == 0.0  # nothing changed before the error
    with pytest.raises(UserError, match="NAME=STRENGTH"):
        parse_edit_args(["smile"])
    with pytest.raises(UserError, match="must be a number"):
        parse_edit_args(["smile=lots"])
    with pytest.raises(UserError, match="invalid edit"):
        EditStack.from_bundle(type("B", (), {"edits": [{"name": "x", "kind": "warp"}], "name": "b",
                                             "generator": b.generator, "extra": {}})())
    with pytest.raises(UserError, match="pose/expression network"):
        EditStack([EditSpec("t", "pose_expression", extra={"target": {"yaw": 1.0}})], {})
    with pytest.raises(ValueError, match="extra.target"):
        EditSpec.from_dict({"name": "t", "kind": "pose_expression", "extra": {"target": {"age": 3}}})


def test_every_kind_survives_a_bundle_round_trip(tmp_path):
    b, specs = _all_kinds_bundle()
    b.save(tmp_path / "b")
    b2 = load_bundle(tmp_path / "b")
    assert [e["name"] for e in b2.edits] == [s.name for s in specs]
    assert [EditSpec.from_dict(e) for e in b2.edits] == specs
    s1, s2 = EditStack.from_bundle(b), EditStack.from_bundle(b2)
    ws = torch.randn(2, NUM_WS, W_DIM)
    ctx = EditContext(crop_landmarks=torch.rand(468, 3) * 64)
    for stack in (s1, s2):
        stack.set_strengths({s.name: 0.7 for s in specs})
    o1, d1 = s1.apply(ws, context=ctx)
    o2, d2 = s2.apply(ws, context=ctx)
    assert torch.allclose(o1, o2, atol=1e-6) and not torch.allclose(o1, ws)
    assert d1 is not None and d2 is not None and torch.equal(d1["b32.conv0"], d2["b32.conv0"])
    # fitting again replaces same-name edits and their tensors, keeps the others
    merge_into_bundle(b2, [EditSpec("smile", "w_direction", "new")], {tensor_key("smile"): torch.zeros(W_DIM)})
    assert [e["name"] for e in b2.edits][-1] == "smile" and len(b2.edits) == len(specs)
    assert b2.extra[tensor_key("smile")].shape == (W_DIM,)


def test_keep_mouth_removes_the_lip_component_of_guarded_edits_only():
    b, _ = _all_kinds_bundle()
    stack = EditStack.from_bundle(b)
    ws = torch.zeros(1, NUM_WS, W_DIM)
    stack.set_strengths({"smile": 1.0, "tint": 1.0})
    free = stack.apply(ws)[0]
    stack.set_strength("keep_mouth", 1.0)
    kept = stack.apply(ws)[0]
    smile = b.extra[tensor_key("smile")]
    assert kept[0, 0, 3] == 0 and kept[0, 1, 5] == 0  # the basis coordinates are removed …
    assert torch.allclose(kept[0, 0, 4:], smile[0, 4:]) and torch.allclose(kept[0, 2:8], smile[2:8])  # … only them
    assert torch.allclose(kept[0, 8:], free[0, 8:])  # tint (keep_mouth False) untouched on its layers
    stack.set_strength("keep_mouth", 0.5)
    half = stack.apply(ws)[0]
    assert torch.isclose(half[0, 0, 3], 0.5 * smile[0, 3])


def test_pose_expression_target_uses_context_landmarks_or_the_w_readout():
    b, _ = _all_kinds_bundle()
    stack = EditStack.from_bundle(b)
    ws = torch.randn(1, NUM_WS, W_DIM)
    stack.set_strength("yaw_to_15", 1.0)
    cur = stack.estimate_params(ws)
    assert cur.shape == (1, len(PARAMS))
    d = stack.pose_expression_delta(ws, {"yaw": float(cur[0, 0])})
    assert d.abs().max() < 1e-5  # already at the target: nothing to do
    d1 = stack.pose_expression_delta(ws, {"yaw": float(cur[0, 0]) + 10})
    d2 = stack.pose_expression_delta(ws, {"yaw": float(cur[0, 0]) + 20})
    assert d1.abs().max() > 0 and torch.equal(d1[:, 8:], torch.zeros_like(d1[:, 8:]))  # coarse layers only
    assert (d2 - d1).norm() > 0
    # landmarks in frame px + the crop affine give the same answer as the same landmarks in crop px
    lm_crop = torch.rand(468, 3).numpy() * 64
    m = np.array([[2.0, 0.3, 10.0], [-0.3, 2.0, 20.0]])
    lm_frame = lm_crop.copy()
    lm_frame[:, :2] = lm_crop[:, :2] @ m[:, :2].T + m[:, 2]
    a = stack.estimate_params(ws, EditContext(landmarks=lm_frame, to_frame=m, crop_size=64))
    c = stack.estimate_params(ws, EditContext(crop_landmarks=lm_crop))
    assert torch.allclose(a, c, atol=1e-4) and not torch.allclose(a, cur)


# ------------------------------------------------------------------------------------------------ fitting


def _planted(n: int = 400, seed: int = 0) -> tuple[EncodedSet, torch.Tensor]:
    """W+ = mean + params · D_true + noise on the coarse layers, with independent parameters."""
    gen = torch.Generator().manual_seed(seed)
    p = len(PARAMS)
    d_true = torch.zeros(p, NUM_WS, W_DIM)
    d_true[:, :8] = torch.randn(p, 8, W_DIM, generator=gen) * 0.2
    y = torch.rand(n, p, generator=gen)
    y[:, :3] = (y[:, :3] - 0.5) * 40  # degrees
    ws = torch.randn(NUM_WS, W_DIM, generator=gen) + torch.einsum("np,pkw->nkw", y, d_true)
    ws = ws + 0.05 * torch.randn(n, NUM_WS, W_DIM, generator=gen)
    clip = torch.arange(n) // 100
    data = EncodedSet(torch.zeros(n, 3, 8, 8), ws, y, torch.zeros(n, 468, 3), clip, torch.arange(n) % 100)
    return data, d_true


def test_supervised_route_recovers_a_planted_direction_and_moves_the_measure_monotonically():
    data, d_true = _planted()
    fit = supervised_directions(data, list(range(8)), holdout_clip=3)
    k = PARAMS.index("smile")
    cos = torch.nn.functional.cosine_similarity(fit.B[k].flatten(), d_true[k].flatten(), dim=0)
    assert cos > 0.98 and torch.allclose(fit.B[k].norm(), d_true[k].norm(), rtol=0.05)
    assert fit.r2["smile"] > 0.9 and fit.r2["yaw"] > 0.9
    # the "measure" of the toy is the planted parameter read back; it rises with every unit of strength
    w0 = data.ws[:20]
    vals = []
    for s in (-2, -1, 0, 1, 2):
        w = w0 + s * fit.B[k]
        vals.append((w[:, fit.layers].flatten(1) @ fit.readout_w.T + fit.readout_b)[:, k])
    v = torch.stack(vals, 1)
    assert ((v[:, 1:] - v[:, :-1]) > 0.5).all()  # one unit of strength ≈ one unit of the parameter
    assert torch.allclose(v[:, 3] - v[:, 2], torch.ones(20), atol=0.1)


@pytest.mark.slow
def test_interfacegan_route_finds_the_planted_boundaries_orthogonal_to_pose():
    data, d_true = _planted(600, seed=1)
    meas = data.params[:, [3, 4, 5, 6, 0, 1, 2]]  # MEASURES order: mouth_open, smile, eyes, brow, yaw, pitch, roll
    normals = interfacegan_directions(data.ws, meas, list(range(8)), orthogonal_to_pose=False)
    assert set(normals) == set(MEASURES)
    for j, name in enumerate(MEASURES):
        true = d_true[[3, 4, 5, 6, 0, 1, 2][j]].flatten()
        cos = torch.nn.functional.cosine_similarity(normals[name].flatten(), true, dim=0)
        proj = (data.ws * normals[name]).sum((1, 2))
        corr = float(torch.corrcoef(torch.stack([proj, meas[:, j]]))[0, 1])
        assert cos > 0.3 and corr > 0.8, (name, float(cos), corr)  # a boundary, not the planted pattern itself
    normals = interfacegan_directions(data.ws, meas, list(range(8)))
    assert abs(float((normals["smile"] * normals["yaw"]).sum())) < 1e-5  # orthogonalised against yaw


def test_random_identity_avoids_pose_expression_directions():
    data, d_true = _planted()
    d = random_identity_direction(data, [5, 6, 7, 8, 9], avoid=d_true)
    assert torch.equal(d[:5], torch.zeros(5, W_DIM)) and d.norm() > 0
    assert (d.flatten() @ d_true.flatten(1).T).abs().max() < 1e-3


@pytest.mark.slow
def test_pose_expression_network_trains_down_on_a_tiny_case():
    b = new_bundle("tiny-64", None, seed=0)
    g = b.generator
    gen = torch.Generator().manual_seed(0)
    n = 60
    d_true = torch.randn(len(PARAMS), 8, W_DIM, generator=gen) * 0.3
    p = torch.rand(n, len(PARAMS), generator=gen)
    base = torch.randn(1, NUM_WS, W_DIM, generator=gen) * 0.3 + g.w_avg
    ws = base.repeat(n, 1, 1)
    ws[:, :8] += torch.einsum("np,pkw->nkw", p, d_true)
    with torch.no_grad():
        crops = g.synthesis(ws)
    data = EncodedSet(crops, ws, p, torch.zeros(n, 468, 3), torch.arange(n) // 30, torch.arange(n) % 30)
    zero_fit = LinearFit(list(range(8)), ws.mean(0), torch.zeros(len(PARAMS), NUM_WS, W_DIM),
                         torch.zeros(len(PARAMS), 8 * W_DIM), torch.zeros(len(PARAMS)), p.std(0))
    net, report = train_pose_expression(b, data, zero_fit, PETrainConfig(steps=120, batch=8, gap=3, hidden=32,
                                                                         lr=3e-3, landmark=0.0, latent=1.0))
    first, last = report["train_loss_first_last"]
    assert last < 0.5 * first
    assert report["heldout_trained"]["recon"] < report["heldout_linear"]["recon"]
    assert report["heldout_trained"]["latent"] < report["heldout_no_edit"]["latent"]


# ------------------------------------------------------------------------------------------------ measures


def test_face_measures_follow_the_synthetic_ground_truth():
    synthetic = pytest.importorskip("realtime.io.synthetic")
    try:
        clip = synthetic.SyntheticClip(synthetic.SynthConfig(seed=3, seconds=1.0))
    except UserError as exc:  # MediaPipe missing
        pytest.skip(str(exc))

    def measure(**kw: float) -> dict[str, float]:
        fp = synthetic.FrameParams(yaw=kw.pop("yaw", 0.0), pitch=kw.pop("pitch", 0.0))
        fp.expression.update(kw)
        lm = torch.from_numpy(clip.landmarks(fp))[None]
        return {k: float(v) for k, v in face_measures(lm).items()}

    assert measure(jaw_open=1.0)["mouth_open"] > measure(jaw_open=0.0)["mouth_open"] + 0.1
    assert measure(smile=1.0)["smile"] > measure(smile=0.0)["smile"] + 0.05
    assert measure(blink=1.0)["eyes_open"] < measure(blink=0.0)["eyes_open"] - 0.05
    assert measure(brow_raise=1.0)["brow_raise"] > measure(brow_raise=0.0)["brow_raise"] + 0.02
    assert measure(yaw=15.0)["yaw"] > measure(yaw=0.0)["yaw"] > measure(yaw=-15.0)["yaw"]
    assert measure(pitch=15.0)["pitch"] > measure(pitch=-15.0)["pitch"]


# ------------------------------------------------------------------------------------------------ CLI


def test_edits_list_and_run_list_edits_show_every_kind(tmp_path, capsys):
    b, specs = _all_kinds_bundle()
    b.save(tmp_path / "b")
    assert cli.main(["edits", "list", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    for s in specs:
        assert s.name in out and s.kind in out
    assert cli.main(["edits", "list", "--json", str(tmp_path / "b")]) == 0
    assert [d["name"] for d in json.loads(capsys.readouterr().out)] == [s.name for s in specs]
    assert cli.main(["edits", "list", str(tmp_path / "nope")]) == 2
    assert "bundle not found" in capsys.readouterr().err
