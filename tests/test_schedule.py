import pytest
import torch
from diffusers import DDPMScheduler

from ctsr.diffusion.schedule import NoiseSchedule, alphas_cumprod, tau_of_t


@pytest.fixture(scope="module")
def reference():
    return DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="epsilon",
    )


def test_alphas_cumprod_match_diffusers(reference):
    ours = alphas_cumprod().float()
    assert torch.allclose(ours, reference.alphas_cumprod, rtol=1e-6, atol=1e-7)
    assert abs(float(ours[999]) - 0.0047) < 1e-4  # DESIGN §2


def test_add_noise_matches_diffusers(reference):
    s = NoiseSchedule()
    g = torch.Generator().manual_seed(0)
    z0, n = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    tau = torch.tensor([0, 20, 500, 999])
    assert torch.allclose(s.add_noise(z0, n, tau), reference.add_noise(z0, n, tau), atol=1e-6)


def test_x0_eps_round_trip_and_exact_denoiser():
    s = NoiseSchedule()
    g = torch.Generator().manual_seed(1)
    z0, n = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    tau = torch.tensor([20.0, 333.5, 979.0])
    z_t = s.add_noise(z0, n, tau)
    assert torch.allclose(s.eps_from_x0(z_t, z0, tau), n, atol=1e-4)
    assert torch.allclose(s.x0_from_eps(z_t, n, tau), z0, atol=1e-3)


def test_fractional_tau_interpolates_between_steps():
    s = NoiseSchedule()
    a = s.alphas_cumprod
    mid = s.alpha_bar(torch.tensor([10.25])).flatten()
    assert torch.allclose(mid, a[10] * 0.75 + a[11] * 0.25)
    ints = s.alpha_bar(torch.arange(1000)).flatten()
    assert torch.equal(ints, a)


def test_tau_of_t_is_linear():
    t = torch.tensor([0.0, 0.5, 1.0])
    assert torch.allclose(tau_of_t(t), torch.tensor([0.0, 499.5, 999.0]))
    assert torch.allclose(tau_of_t(t, tau_max=500), torch.tensor([0.0, 250.0, 500.0]))
