"""VectorQuantizer: nearest code, losses by hand, straight-through gradient, EMA and restarts."""

from __future__ import annotations

import pytest
import torch

from avatar_lightning.models import PassThroughQuantizer, VectorQuantizer


def _quantizer(update: str = "loss", restart: bool = False, k: int = 4, n: int = 2) -> VectorQuantizer:
    torch.manual_seed(0)
    vq = VectorQuantizer(k, n, beta=0.25, update=update, restart_dead_codes=restart)
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])[:k, :n])
    return vq


def test_nearest_codes_and_losses_match_a_hand_computation() -> None:
    vq = _quantizer().eval()
    # Four cells of one 2×2 grid: nearest codes 1, 2, 0, 1.
    cells = torch.tensor([[0.9, 0.2], [0.1, 0.7], [0.2, -0.1], [0.6, 0.1]])
    z = cells.t().reshape(1, 2, 2, 2)
    out = vq(z)
    assert out.indices.tolist() == [[[1, 2], [0, 1]]]
    q = vq.codebook[torch.tensor([1, 2, 0, 1])].detach()
    mse = ((cells - q) ** 2).mean()
    torch.testing.assert_close(out.codebook_loss, mse)
    torch.testing.assert_close(out.commitment_loss, 0.25 * mse)
    torch.testing.assert_close(out.loss, 1.25 * mse)
    torch.testing.assert_close(out.quantized, q.t().reshape(1, 2, 2, 2))
    assert out.usage.item() == pytest.approx(3 / 4)
    p = torch.tensor([1 / 4, 2 / 4, 1 / 4])
    assert out.perplexity.item() == pytest.approx(torch.exp(-(p * p.log()).sum()).item(), rel=1e-6)


def test_straight_through_gradient_reaches_encoder_unchanged() -> None:
    vq = _quantizer()
    z = torch.randn(2, 2, 3, 3, requires_grad=True)
    weights = torch.randn(2, 2, 3, 3)
    out = vq(z)
    q = out.quantized
    q.retain_grad()
    (weights * q).sum().backward()
    # d/dz of the decoder loss equals d/dq: the quantiser is the identity for gradients.
    torch.testing.assert_close(z.grad, q.grad)
    torch.testing.assert_close(z.grad, weights)
    assert vq.codebook.grad is None or vq.codebook.grad.abs().sum() == 0


def test_codebook_loss_trains_codebook_and_commitment_trains_encoder() -> None:
    vq = _quantizer()
    z = torch.randn(1, 2, 2, 2, requires_grad=True)
    out = vq(z)
    out.codebook_loss.backward(retain_graph=True)
    assert z.grad is None and vq.codebook.grad.abs().sum() > 0
    out.commitment_loss.backward()
    assert z.grad.abs().sum() > 0


def test_ema_moves_used_codes_towards_assigned_means() -> None:
    vq = _quantizer(update="ema")
    assert "codebook" not in dict(vq.named_parameters())
    vq.ema_decay = 0.0  # one step replaces each used code by the mean of its assignments
    cells = torch.tensor([[0.9, 0.2], [0.7, -0.2], [0.1, 0.7], [0.2, 0.9]])
    vq.train()(cells.t().reshape(1, 2, 2, 2))
    torch.testing.assert_close(vq.codebook[1], torch.tensor([0.8, 0.0]), atol=1e-4, rtol=0)
    torch.testing.assert_close(vq.codebook[2], torch.tensor([0.15, 0.8]), atol=1e-4, rtol=0)


def test_ema_codebook_is_unchanged_in_eval() -> None:
    vq = _quantizer(update="ema").eval()
    before = vq.codebook.clone()
    vq(torch.randn(2, 2, 4, 4))
    torch.testing.assert_close(vq.codebook, before)


def test_dead_codes_restart_on_encoder_outputs() -> None:
    vq = _quantizer(restart=True)
    vq.usage_decay = 0.0  # usage = this batch's counts: code 3 at (5, 5) is never chosen
    z = torch.rand(2, 2, 4, 4) * 0.5
    vq.train()(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 2)
    new = vq.codebook[3].detach()
    assert torch.cdist(new[None], flat).min() < 0.01  # moved onto (near) an encoder output
    assert not torch.allclose(new, torch.tensor([5.0, 5.0]))
    assert vq.running_usage[3] > 0  # the restarted code gets the full horizon again


def test_default_restart_horizon_spares_rare_codes() -> None:
    """With the default decay and threshold a never-chosen code restarts after ≈68 steps, while a
    code chosen 16× less often than average, but regularly, survives."""
    g = torch.Generator().manual_seed(0)
    vq = VectorQuantizer(8, 2, update="ema", restart_dead_codes=True)
    assert vq.usage_decay == 0.95 and vq.dead_threshold == 0.03
    centres = torch.tensor([[float(i), 0.0] for i in range(8)])
    vq.codebook.copy_(centres)
    vq.ema_sum.copy_(centres)
    vq.train()
    restarted_at = None
    for step in range(150):
        # 64 cells per batch over codes 0..5; code 6 once every 2 steps (0.5 vs a mean of 8); code 7 never
        cells = torch.randint(0, 6, (64,), generator=g).float()
        if step % 2 == 0:
            cells[0] = 6.0
        z = torch.stack([cells + 0.01 * torch.randn(64, generator=g), torch.zeros(64)], dim=1)
        vq(z.T.reshape(1, 2, 8, 8))
        if restarted_at is None and vq.codebook[7, 0] < 6.5:
            restarted_at = step
    assert restarted_at is not None and 40 < restarted_at < 110, restarted_at
    assert abs(float(vq.codebook[6, 0]) - 6.0) < 0.1, "a rare but live code must not be restarted"


def test_checkpoints_without_usage_started_still_load() -> None:
    vq = VectorQuantizer(4, 2, update="ema")
    state = {k: v for k, v in vq.state_dict().items() if k != "usage_started"}
    fresh = VectorQuantizer(4, 2, update="ema")
    fresh.load_state_dict(state, strict=True)
    assert bool(fresh.usage_started), "an older checkpoint had its usage statistics running already"
    assert "usage_started" not in state  # the caller's dict is left as it was


def test_no_restart_without_flag() -> None:
    vq = _quantizer(restart=False)
    vq.usage_decay = 0.0
    vq.train()(torch.rand(2, 2, 4, 4) * 0.5)
    torch.testing.assert_close(vq.codebook[3].detach(), torch.tensor([5.0, 5.0]))


def test_lookup_inverts_indices() -> None:
    vq = _quantizer().eval()
    z = torch.randn(2, 2, 3, 3)
    out = vq(z)
    torch.testing.assert_close(vq.lookup(out.indices), out.quantized)


def test_wrong_code_dim_is_named() -> None:
    with pytest.raises(ValueError, match=r"\[B, 2, h, w\]"):
        _quantizer()(torch.randn(1, 3, 2, 2))


def test_pass_through_is_identity_with_zero_losses() -> None:
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = PassThroughQuantizer(4)(z)
    assert out.quantized is z and out.loss.item() == 0.0 and (out.indices == -1).all()


def _ddp_update(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    vq = _quantizer(update="ema", restart=True)
    vq.ema_decay = 0.0
    vq.usage_decay = 0.0
    # rank 0 only uses code 1, rank 1 only code 2; code 3 (5, 5) is dead on both ranks
    cell = torch.tensor([[0.9, 0.1], [0.1, 0.9]])[rank]
    vq.train()(cell.view(1, 2, 1, 1).expand(1, 2, 2, 2).contiguous())
    torch.save({k: v for k, v in vq.state_dict().items()}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_ema_statistics_and_restarts_are_global_under_distributed(tmp_path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_ddp_update, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    states = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for key in states[0]:
        torch.testing.assert_close(states[0][key], states[1][key], msg=key)  # identical replicas
    s = states[0]
    # counts are summed over ranks: each rank saw 4 cells of its code
    torch.testing.assert_close(s["ema_count"][1:3], torch.tensor([4.0, 4.0]))
    torch.testing.assert_close(s["codebook"][1], torch.tensor([0.9, 0.1]), atol=1e-4, rtol=0)
    torch.testing.assert_close(s["codebook"][2], torch.tensor([0.1, 0.9]), atol=1e-4, rtol=0)
    # the dead code was restarted onto (near) an encoder output of rank 0, the same on both ranks
    assert torch.cdist(s["codebook"][3:4], torch.tensor([[0.9, 0.1]])).item() < 0.01


@pytest.mark.parametrize("update", ["loss", "ema"])
def test_codes_are_looked_up_before_the_codebook_update(update: str) -> None:
    """On a step that restarts (and EMA-updates) codes, every cell still gets the code its index
    named when it was chosen, not the updated or restarted row."""
    vq = _quantizer(update=update, restart=True)
    vq.usage_decay = 0.0  # usage = this batch's counts
    vq.dead_threshold = 0.5  # code 3, chosen by one cell of 32, counts as dead: restarted this step
    z = torch.rand(2, 2, 4, 4) * 0.5
    z[0, :, 0, 0] = torch.tensor([4.0, 4.0])  # the one cell that picks code 3 at (5, 5)
    before = vq.codebook.detach().clone()
    out = vq.train()(z)
    assert out.indices[0, 0, 0] == 3
    assert not torch.allclose(vq.codebook[3], before[3])  # the restart did happen
    torch.testing.assert_close(out.quantized.detach(), before[out.indices].permute(0, 3, 1, 2))
