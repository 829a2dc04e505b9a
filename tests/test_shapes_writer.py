"""Dataset writer: shards read back with webdataset, resume, summary; and the CLI."""

import json

import webdataset as wds

import lensgen.cli
from lensgen.data.shapes_dataset import ShapesDataConfig, write_dataset
from lensgen.data.shards import list_shards
from lensgen.shapes.scene import Scene, SceneConfig


def test_shards_round_trip_and_resume(tmp_path):
    cfg = ShapesDataConfig(n=23, out=str(tmp_path), shard_size=10, scene=SceneConfig(p_text=0.3))
    summary = write_dataset(cfg, progress=False)
    shards = list_shards(tmp_path)
    assert len(shards) == 3 and summary["shards_written"] == 3
    samples = list(wds.WebDataset([str(p) for p in shards], shardshuffle=False).decode("pil"))
    assert len(samples) == 23 and len({s["__key__"] for s in samples}) == 23
    sizes = set()
    for s in samples:
        meta, img = s["json"], s["png"]
        assert img.size == (meta["width"], meta["height"]) and meta["source"] == "synthetic"
        assert set(meta["captions"]) == {"dense", "short"} and meta["size_class"] in (64, 96, 128)
        Scene.from_dict(meta["scene"])
        sizes.add((meta["width"], meta["height"]))
    assert len(sizes) > 5
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["n"] == 23 and sum(on_disk["sizes"].values()) == 23 and on_disk["dense_words"]["mean"] > 60

    shards[1].unlink()  # a lost shard is rewritten; the others are skipped and left untouched
    before = shards[0].stat().st_mtime_ns
    again = write_dataset(cfg, progress=False)
    assert again["shards_written"] == 1 and again["shards_skipped"] == 2
    assert shards[0].stat().st_mtime_ns == before
    assert again["dense_words"] == summary["dense_words"] and again["sizes"] == summary["sizes"]
    resamples = list(wds.WebDataset([str(p) for p in list_shards(tmp_path)], shardshuffle=False))
    assert [s["json"] for s in resamples] == [s["json"] for s in
                                             wds.WebDataset([str(p) for p in shards], shardshuffle=False)]


def _cli(monkeypatch, argv):
    modules = [m for m in lensgen.cli.COMMAND_MODULES if m != "lensgen.data.cli"]
    monkeypatch.setattr(lensgen.cli, "COMMAND_MODULES", modules + ["lensgen.data.cli"])
    return lensgen.cli.main(argv)


def test_cli_data_and_eval(tmp_path, monkeypatch, capsys):
    out = tmp_path / "data"
    assert _cli(monkeypatch, ["data", "shapes", "--n", "12", "--out", str(out), "--shard-size", "5",
                              "--bases", "64", "--no-progress"]) == 0
    assert len(list_shards(out)) == 3
    summary = json.loads((out / "summary.json").read_text())
    assert all(int(k.split("x")[0]) <= 96 for k in summary["sizes"])
    ev = tmp_path / "eval"
    assert _cli(monkeypatch, ["eval", "shapes", "--ground-truth", "--limit", "1", "--n-per-prompt", "1",
                              "--tasks", "counting,position,colors", "--out", str(ev), "--no-progress"]) == 0
    res = json.loads((ev / "results.json").read_text())
    assert res["overall"] == 1.0 and set(res["tasks"]) == {"counting", "position", "colors"}
    assert "| position |" in (ev / "results.md").read_text()
    assert _cli(monkeypatch, ["eval", "shapes", "--noise", "--limit", "1", "--n-per-prompt", "1",
                              "--tasks", "single_object", "--no-progress"]) == 0
    assert "0.000" in capsys.readouterr().out
    assert _cli(monkeypatch, ["eval", "shapes", "--noise", "--size", "64x20"]) == 2
    assert _cli(monkeypatch, ["data", "shapes", "--n", "5", "--out", str(out), "--bases", "x"]) == 2
    assert "--bases" in capsys.readouterr().err
