"""live.py: the sample-grid schedule and truncating a dvclive folder for a resume."""
import pytest

from dcgan import live


@pytest.mark.parametrize("epochs", [1, 7, 100, 101, 300, 5000, 100_000])
def test_auto_grids_are_bounded_dense_early_and_end_on_the_last_epoch(epochs):
    g = sorted(live.grid_epochs("auto", epochs))
    assert len(g) == min(epochs, live.GRIDS_PER_RUN)
    assert g[-1] == epochs and g[0] == 1 and all(1 <= e <= epochs for e in g)
    if epochs > live.GRIDS_PER_RUN:
        gaps = [b - a for a, b in zip(g, g[1:])]
        assert gaps[:5] == [1] * 5 and max(gaps) > 1          # every epoch at first, then further apart


def test_every_n_epochs_plus_the_last():
    assert live.grid_epochs(3, 10) == {3, 6, 9, 10}
    assert live.grid_epochs(1, 4) == {1, 2, 3, 4}


def test_truncate_drops_rows_and_grids_after_the_step(tmp_path):
    m = tmp_path / "plots/metrics"
    m.mkdir(parents=True)
    (m / "loss.tsv").write_text("step\tloss\n1\t0.5\n2\t0.4\n3\t0.3\n1")   # "1": row 12 cut by a kill
    imgs = tmp_path / "plots/images/samples"
    imgs.mkdir(parents=True)
    for e in (1, 2, 3):
        (imgs / f"{e:05d}.png").write_bytes(b"png")
    live.truncate(tmp_path, 2)
    assert (m / "loss.tsv").read_text() == "step\tloss\n1\t0.5\n2\t0.4\n"
    assert sorted(p.name for p in imgs.iterdir()) == ["00001.png", "00002.png"]
