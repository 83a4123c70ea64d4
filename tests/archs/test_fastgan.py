"""The few-shot architecture (archs/fastgan.py): what it adds to the contract (tests/archs/test_contract.py
checks the rest): its self-supervised discriminator, noise only in training, exact resume, DDP, any size."""
import subprocess

import numpy as np
import pytest
import torch

from conftest import ROOT, make_prepared
from dcgan import engine, losses
from dcgan.archs import fastgan
from dcgan.archs.dcgan import init_weights
from test_distributed import SYNC, ddp_env, train_cmd, write_params
from test_training import assert_identical, run_train, weights

FASTGAN = {"arch": "fastgan", "loss": "hinge", "diffaugment": "color,translation", "ema_halflife": 500,
           "eval_every": 2}


@pytest.fixture
def prepared(tmp_path):
    return make_prepared(tmp_path / "prepared", n_train=96)


@pytest.mark.parametrize("size, channels", [(16, 1), (17, 3), (48, 3), (120, 3), (128, 1)])
def test_any_size_gives_images_logits_and_a_reconstruction(size, channels):
    G = fastgan.Generator(size, channels, nz=8, ngf=4).apply(init_weights)
    D = fastgan.Discriminator(size, channels, ndf=4).apply(init_weights)
    x = G(torch.randn(3, 8))
    assert x.shape == (3, channels, size, size)
    logits, recon = D(x, reconstruct=True)
    assert logits.shape == (3,) and recon.ndim == 0 and torch.isfinite(recon)
    assert torch.equal(D.eval()(x), D(x, reconstruct=True)[0])   # the same logits either way


def test_skip_layer_excitation_joins_levels_four_doublings_apart():
    assert list(fastgan.Generator(32, 3, 8, 4).excite) == []          # 4..32 px: no level 4 doublings up
    assert list(fastgan.Generator(64, 3, 8, 4).excite) == ["4"]       # 4 px gates 64 px (FastGAN's se_64)
    assert list(fastgan.Generator(256, 3, 8, 4).excite) == ["4", "5", "6"]


def test_noise_is_injected_in_training_only():
    G = fastgan.Generator(32, 1, 8, 4).apply(init_weights)
    for m in G.modules():
        if isinstance(m, fastgan.NoiseInjection):
            m.weight.data.fill_(0.5)
    z = torch.randn(4, 8)
    G.train()
    assert not torch.equal(G(z), G(z))
    with torch.no_grad():                       # BatchNorm recalibration of the EMA: no noise drawn
        state = torch.get_rng_state()
        G(z)
        assert torch.equal(state, torch.get_rng_state())
    G.eval()
    assert torch.equal(G(z), G(z))


def test_the_training_step_teaches_the_decoder_and_logs_its_error():
    torch.manual_seed(0)
    G = fastgan.Generator(32, 3, 8, 4).apply(init_weights)
    D = fastgan.Discriminator(32, 3, 4).apply(init_weights)
    before = [p.detach().clone() for p in D.decoder.parameters()]
    opt_g, opt_d = torch.optim.Adam(G.parameters(), 1e-3), torch.optim.Adam(D.parameters(), 1e-3)
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    errors = []
    for _ in range(20):
        *_, recon = engine.train_step(G, D, opt_g, opt_d, x, torch.randn(8, 8), torch.autocast("cpu", enabled=False),
                                      losses.build("hinge"))
        errors.append(recon.item())
    assert all(not torch.equal(a, b) for a, b in zip(before, D.decoder.parameters()))
    assert np.mean(errors[-5:]) < np.mean(errors[:5])    # the decoder learns to rebuild the same images


def test_training_logs_recon_and_a_resume_equals_one_long_run(tmp_path, prepared):
    r = run_train(tmp_path, prepared, "long", **FASTGAN)
    s = r["summary"]
    assert np.isfinite(s["recon"]) and s["recon"] > 0 and np.isfinite(s["swd"])
    assert any("arch fastgan" in line for line in r["log"])
    run_train(tmp_path, prepared, "short", **{**FASTGAN, "epochs": 2})
    r = run_train(tmp_path, prepared, "short", **FASTGAN)
    assert any("resuming from checkpoint at epoch 2" in line for line in r["log"])
    assert_identical(weights(tmp_path / "long/models"), weights(tmp_path / "short/models"))
    g = torch.load(tmp_path / "long/models/generator.pt", weights_only=True)
    assert g["arch"] == "fastgan"


def test_two_ddp_processes_train_it_and_agree(tmp_path):
    prepared = make_prepared(tmp_path / "prepared", n_train=64)
    params = write_params(tmp_path / "params.yaml", nproc=2, epochs=1, arch="fastgan", loss="hinge")
    r = subprocess.run(train_cmd(tmp_path, "a", prepared, params), env=ddp_env(), capture_output=True, text=True,
                       timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"all 2 {SYNC}" in r.stdout
