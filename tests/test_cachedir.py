"""vitpipe's one cache folder: everything cached lives in the folder the user named, and
`vitpipe cache --clear` deletes only a folder vitpipe created (issue 10, item 1)."""

from __future__ import annotations

from pathlib import Path

from conftest import tiny_params, train_outputs

from vitpipe import cachedir
from vitpipe.cli import main
from vitpipe.train.training import TrainOutputs, run_training


def _outputs(out: Path) -> TrainOutputs:
    return train_outputs(out)


def test_everything_cached_stays_in_the_named_folder_and_clear_spares_its_parent(tmp_path, monkeypatch,
                                                                                 tiny_index, capsys):
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    cache = home / "vitpipe-features"
    monkeypatch.setenv("VITPIPE_CACHE_DIR", str(cache))
    run_training(tiny_params(epochs=1), tiny_index, _outputs(tmp_path / "a"))  # features/
    run_training(tiny_params(epochs=1, freeze="none", image_source="decoded"), tiny_index,
                 _outputs(tmp_path / "b"))  # decoded/
    assert sorted(p.name for p in home.iterdir()) == ["thesis.tex", "vitpipe-features"]
    assert {"features", "decoded", cachedir.TAG} <= {p.name for p in cache.iterdir()}

    assert main(["cache", "--clear"]) == 0
    assert not cache.exists()
    assert (home / "thesis.tex").read_text() == "years of work"
    assert "Traceback" not in capsys.readouterr().err


def test_clear_refuses_a_folder_vitpipe_did_not_create(tmp_path, monkeypatch, capsys):
    mine = tmp_path / "photos"
    (mine / "features").mkdir(parents=True)
    (mine / "holiday.jpg").write_bytes(b"\xff\xd8 not yours")
    monkeypatch.setenv("VITPIPE_CACHE_DIR", str(mine))
    cachedir.make_cache_dir(cachedir.cache_subdir("features"))  # vitpipe uses it, but did not create it
    assert main(["cache", "--clear"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(mine) in err[0] and "CACHEDIR.TAG" in err[0]
    assert (mine / "holiday.jpg").read_bytes() == b"\xff\xd8 not yours"


def test_a_cache_dir_that_is_a_file_is_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("VITPIPE_CACHE_DIR", str(tmp_path / "file"))
    assert main(["cache", "--clear"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a file" in err[0] and (tmp_path / "file").read_text() == "x"
