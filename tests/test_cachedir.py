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


def test_clear_deletes_only_what_vitpipe_wrote_in_a_folder_it_adopted(tmp_path, monkeypatch, tiny_index, capsys):
    """Issue 22, case 6: a folder vitpipe found empty gets its tag; a file the user put there later was
    deleted with the rest by `cache --clear`. Now nothing is deleted while it holds anything else."""
    adopted = tmp_path / "scratch"
    adopted.mkdir()  # the user's folder, empty when vitpipe first used it
    monkeypatch.setenv("VITPIPE_CACHE_DIR", str(adopted))
    run_training(tiny_params(epochs=1), tiny_index, _outputs(tmp_path / "a"))
    assert cachedir.is_vitpipes(adopted)
    (adopted / "results.csv").write_text("the user's")
    (adopted / "onnx").symlink_to(tmp_path / "a", target_is_directory=True)  # a link named like ours: not ours
    before = sorted(p.name for p in adopted.rglob("*"))
    assert main(["cache", "--clear"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not cleared: it holds onnx, results.csv, which vitpipe did not write" in err[0], err
    assert sorted(p.name for p in adopted.rglob("*")) == before and (tmp_path / "a" / "model.safetensors").is_file()

    (adopted / "results.csv").unlink()
    (adopted / "onnx").unlink()
    assert main(["cache", "--clear"]) == 0
    assert not adopted.exists()


def test_an_empty_cache_dir_variable_is_an_error_not_the_default_folder(tmp_path, monkeypatch, capsys):
    """`VITPIPE_CACHE_DIR= vitpipe cache --clear` (a script's unset variable) cleared ~/.cache/vitpipe."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("VITPIPE_CACHE_DIR")
    default = cachedir.make_cache_dir(cachedir.cache_subdir("features"))
    (default / "store").write_text("computed for hours")
    for value in ("", "  "):
        monkeypatch.setenv("VITPIPE_CACHE_DIR", value)
        for argv in (["cache", "--clear"], ["cache"]):
            assert main(argv) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and "VITPIPE_CACHE_DIR is set but empty" in err[0], err
    assert (default / "store").read_text() == "computed for hours"


def test_a_cache_folder_that_cannot_be_listed_is_one_line(tmp_path, monkeypatch, capsys):
    import pathlib

    root = tmp_path / "cache"
    monkeypatch.setenv("VITPIPE_CACHE_DIR", str(root))
    cachedir.make_cache_dir(cachedir.cache_subdir("features"))
    real = pathlib.Path.iterdir

    def deny(self):
        if self == root:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(pathlib.Path, "iterdir", deny)
    assert main(["cache", "--clear"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot be listed (Permission denied); nothing cleared" in err[0], err
    assert (root / "features").is_dir()
