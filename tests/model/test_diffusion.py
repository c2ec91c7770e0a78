import torch

from dpdiff.model.diffusion import NoiseSchedule, ddim_reconstruct, ddim_timesteps, linear_beta_schedule, q_sample


def test_linear_schedule_matches_paper():
    betas = linear_beta_schedule(1000, 1e-4, 0.02)
    assert betas.shape == (1000,)
    assert abs(betas[0].item() - 1e-4) < 1e-12 and abs(betas[-1].item() - 0.02) < 1e-12
    abar = NoiseSchedule(betas).alphas_cumprod
    assert torch.all(abar[1:] < abar[:-1]) and abar[-1] < 1e-4


def test_ddim_timesteps():
    assert ddim_timesteps(100, 3) == [100, 67, 33]
    assert ddim_timesteps(100, 1) == [100]
    assert ddim_timesteps(2, 10) == [2, 1, 0]


def test_ddim_with_perfect_noise_predictor_recovers_x0():
    torch.manual_seed(0)
    abar = NoiseSchedule.linear().alphas_cumprod.float()
    x0 = torch.randn(4, 16, 8)
    noise = torch.randn_like(x0)
    for start, steps in [(100, 3), (400, 5), (999, 1)]:
        x_t = q_sample(x0, torch.full((4,), start), noise, abar)

        def perfect(x_s, t_batch, s):
            a = abar[s]
            return (x_s - a.sqrt() * x0) / (1 - a).sqrt()

        x_hat = ddim_reconstruct(x_t, start, steps, perfect, abar)
        assert torch.allclose(x_hat, x0, atol=1e-4), (start, steps)


def test_ddim_with_wrong_predictor_does_not_recover():
    abar = NoiseSchedule.linear().alphas_cumprod.float()
    x0 = torch.randn(2, 8, 4)
    x_t = q_sample(x0, torch.full((2,), 300), torch.randn_like(x0), abar)
    x_hat = ddim_reconstruct(x_t, 300, 3, lambda x, t, s: torch.zeros_like(x), abar)
    assert not torch.allclose(x_hat, x0, atol=1e-2)
