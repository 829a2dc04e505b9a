"""Curation runs end to end on a hand-made folder: verdicts, conservation, shards, resume, inputs, CLI."""

import json

import numpy as np
import pytest
from PIL import Image

import lensgen.cli
from lensgen.data.curate import synth
from lensgen.data.curate.config import load_config
from lensgen.data.curate.inputs import stable_id
from lensgen.data.curate.manifest import read_manifest
from lensgen.data.curate.pipeline import run_curation
from lensgen.data.curate.worker import Worker
from lensgen.data.shards import iter_samples, list_shards, write_shard
from lensgen.errors import UserError

# file -> the step expected to reject it (None: kept)
EXPECTED = {
    "a/clean0.jpg": None, "a/clean0_copy.jpg": "dedup", "a/clean1.jpg": None, "a/clean2.jpg": None,
    "a/blurred1.png": "clarity", "b/flat.png": "clarity", "b/two_tone.png": "entropy", "b/dark.png": "brightness",
    "b/bright.png": "brightness", "b/tiny.jpg": "resolution", "c/truncated.jpg": "corrupt",
    "c/empty.jpg": "corrupt", "c/text.jpg": "corrupt", "c/bomb.png": "corrupt", "c/png_named.jpg": None,
    "c/deep/nested/clean3.webp": None,
}


def make_folder(root):
    photos = [synth.photo_like(s, 460 + 16 * s, 520) for s in range(5)]
    rng = np.random.default_rng(0)
    blocks = (rng.random((48, 64)) > 0.5).astype(np.uint8).repeat(8, 0).repeat(8, 1) * 255
    files = {
        "a/clean0.jpg": synth.encode(photos[0], "JPEG"),
        "a/clean0_copy.jpg": synth.near_copy(photos[0]),
        "a/clean1.jpg": synth.encode(photos[1], "JPEG"),
        "a/clean2.jpg": synth.encode(photos[2], "JPEG"),
        "a/blurred1.png": synth.encode(synth.blurred(photos[1]), "PNG"),
        "b/flat.png": synth.encode(synth.flat(), "PNG"),
        "b/two_tone.png": synth.encode(Image.fromarray(blocks).convert("RGB"), "PNG"),
        "b/dark.png": synth.encode(synth.too_dark(1, 400, 400), "PNG"),
        "b/bright.png": synth.encode(synth.too_bright(2, 400, 400), "PNG"),
        "b/tiny.jpg": synth.encode(synth.photo_like(9, 200, 300), "JPEG"),
        "c/truncated.jpg": synth.truncated_jpeg(photos[3]),
        "c/empty.jpg": b"",
        "c/text.jpg": b"hello, I am not an image\n" * 8,
        "c/bomb.png": synth.decompression_bomb_png(),
        "c/png_named.jpg": synth.encode(photos[3], "PNG"),
        "c/deep/nested/clean3.webp": synth.encode(photos[4], "WEBP"),
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "a/clean2.txt").write_text("a short caption\n")  # sidecar caption: carried to the shard
    (root / "c/notes.md").write_text("not an image extension: ignored")
    return root


def config(**run):
    return load_config(None, {"run": {"workers": 1, "shard_size": 4, "progress": False, **run}})


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("in"))


@pytest.fixture(scope="module")
def reference(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    summary = run_curation(folder, out, config())
    return out, summary


def shard_contents(out):
    """Every member of every output shard (tar headers carry write times, so bytes differ)."""
    return [{k: v for k, v in s.items() if k == "__key__" or not k.startswith("__")}
            for s in iter_samples(out / "shards", decode=None)]


def rows_by_source(out):
    return {r["source"]: r for r in read_manifest(out).to_pylist()}


def test_every_input_gets_the_expected_verdict(reference):
    out, summary = reference
    rows = rows_by_source(out)
    assert set(rows) == set(EXPECTED)
    assert {s: r["rejected_by"] for s, r in rows.items()} == EXPECTED
    assert rows["a/clean0_copy.jpg"]["dup_of"] == rows["a/clean0.jpg"]["id"] == stable_id("a/clean0.jpg")
    assert rows["a/clean0_copy.jpg"]["dup_similarity"] > 0.985
    assert rows["c/png_named.jpg"]["format"] == "PNG"
    assert "truncated" in rows["c/truncated.jpg"]["decode_error"]
    # scores after the rejecting step are not computed; those before are all recorded
    assert rows["b/dark.png"]["laplacian_var"] > 100 and rows["b/dark.png"]["luma"] < 0.08
    assert rows["b/flat.png"]["entropy_bits"] is None
    assert rows["a/clean1.jpg"]["nsfw_score"] == 0.0 and rows["a/clean1.jpg"]["aesthetic_score"] is None


def test_counts_are_conserved(reference):
    out, summary = reference
    rows = read_manifest(out).to_pylist()
    kept = sum(r["verdict"] == "kept" for r in rows)
    for unit in {r["unit"] for r in rows}:  # every input of a unit has its own position, in order
        assert [r["position"] for r in rows if r["unit"] == unit] == list(range(sum(r["unit"] == unit for r in rows)))
    assert summary["inputs"] == len(rows) == len(EXPECTED)
    assert summary["kept"] == kept == 5
    assert summary["conservation_ok"]
    steps = summary["steps"]
    assert steps[0]["in"] == len(rows) and steps[-1]["out"] == kept
    for before, after in zip(steps, steps[1:]):
        assert before["out"] == after["in"] and before["in"] == before["rejected"] + before["out"]
    rejected = {s["step"]: s["rejected"] for s in steps}
    assert rejected == {"corrupt": 4, "resolution": 1, "nsfw": 0, "aesthetic": 0, "watermark": 0, "clarity": 2,
                        "entropy": 1, "brightness": 2, "dedup": 1}
    assert {s["step"]: s["status"] for s in steps}["aesthetic"].startswith("skipped")
    assert sum(b["count"] for b in summary["buckets"]) == kept and len(summary["buckets"]) == 27
    assert (out / "summary.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "summary.json").read_text())["kept"] == kept


def test_kept_images_are_in_the_shards_with_their_metadata(reference):
    out, _ = reference
    rows = rows_by_source(out)
    samples = list(iter_samples(out / "shards", decode=None))
    kept = {r["id"] for r in rows.values() if r["verdict"] == "kept"}
    assert sorted(s["__key__"] for s in samples) == sorted(kept)
    by_key = {s["__key__"]: s for s in samples}
    clean2 = by_key[stable_id("a/clean2.jpg")]
    assert clean2["txt"] == b"a short caption"
    meta = json.loads(clean2["json"])
    assert meta["source"] == "a/clean2.jpg" and meta["source_tag"] == "real" and meta["scores"]["luma"] > 0.1
    assert "png" in by_key[stable_id("c/png_named.jpg")]  # stored under its real format
    assert "webp" in by_key[stable_id("c/deep/nested/clean3.webp")]
    shard_rows = [r for r in rows.values() if r["verdict"] == "kept"]
    assert all((out / r["shard"]).is_file() for r in shard_rows)


@pytest.mark.parametrize("phase", ["score", "write"])
def test_resume_after_a_crash_gives_the_same_manifest(folder, reference, tmp_path, monkeypatch, phase):
    ref_out, _ = reference
    method = {"score": "score_unit", "write": "write_unit"}[phase]
    original = getattr(Worker, method)
    calls = []

    def crashing(self, unit):
        calls.append(unit["index"])
        if len(calls) == 3:
            raise RuntimeError("injected crash")
        return original(self, unit)

    monkeypatch.setattr(Worker, method, crashing)
    with pytest.raises(RuntimeError, match="injected crash"):
        run_curation(folder, tmp_path, config())
    assert len(list((tmp_path / ("stage" if phase == "score" else "manifest")).glob("part-*"))) == 2
    assert not (tmp_path / "summary.json").exists()
    calls.clear()
    monkeypatch.setattr(Worker, method, lambda self, unit: calls.append(unit["index"]) or original(self, unit))
    summary = run_curation(folder, tmp_path, config())
    assert calls == [2, 3]  # the two finished units were not redone
    assert read_manifest(tmp_path).equals(read_manifest(ref_out))
    assert shard_contents(tmp_path) == shard_contents(ref_out)
    assert summary["conservation_ok"] and summary["kept"] == 5


def test_rerun_is_idempotent_and_a_changed_config_is_refused(folder, tmp_path, monkeypatch):
    run_curation(folder, tmp_path, config())
    before = read_manifest(tmp_path)
    calls = []
    monkeypatch.setattr(Worker, "run", lambda self, task: calls.append(task))
    summary = run_curation(folder, tmp_path, config(workers=3))  # scheduling knobs may change
    assert calls == [] and read_manifest(tmp_path).equals(before) and summary["kept"] == 5
    changed = load_config(None, {"run": {"workers": 1, "shard_size": 4, "progress": False},
                                 "clarity": {"min_variance": 50.0}})
    with pytest.raises(UserError, match="different config"):
        run_curation(folder, tmp_path, changed)
    monkeypatch.undo()
    summary = run_curation(folder, tmp_path, changed, restart=True)
    assert summary["kept"] == 5 and rows_by_source(tmp_path)["a/blurred1.png"]["rejected_by"] == "clarity"


def test_webdataset_shards_as_input(tmp_path):
    photos = [synth.photo_like(20 + s, 400, 400) for s in range(3)]
    samples = [
        {"__key__": "000000000", "jpg": synth.encode(photos[0]), "txt": "a cat",
         "json": {"url": "http://example.com/0.jpg", "caption": "a cat"}},
        {"__key__": "000000001", "jpg": synth.encode(photos[1]), "json": {"caption": "from json", "synthetic": True}},
        {"__key__": "000000002", "jpg": synth.truncated_jpeg(photos[2]), "txt": "broken"},
        {"__key__": "000000003", "txt": "no image at all"},
    ]
    write_shard(tmp_path / "in" / "00000.tar", samples[:2])
    write_shard(tmp_path / "in" / "00001.tar", samples[2:])
    summary = run_curation(tmp_path / "in", tmp_path / "out", config())
    rows = rows_by_source(tmp_path / "out")
    assert set(rows) == {"00000.tar/000000000", "00000.tar/000000001", "00001.tar/000000002",
                         "00001.tar/000000003"}
    assert rows["00000.tar/000000000"]["id"] == stable_id("00000.tar/000000000")
    assert rows["00000.tar/000000000"]["caption"] == "a cat"
    assert json.loads(rows["00000.tar/000000000"]["source_meta"])["url"] == "http://example.com/0.jpg"
    assert rows["00000.tar/000000001"]["caption"] == "from json"
    assert rows["00000.tar/000000001"]["source_tag"] == "synthetic"
    assert rows["00001.tar/000000002"]["rejected_by"] == "corrupt"
    assert rows["00001.tar/000000003"]["decode_error"] == "no image member in the sample"
    assert summary["kept"] == 2 and summary["units"] == 2
    assert summary["kept_by_source_tag"] == {"real": 1, "synthetic": 1}


def test_list_input_and_input_errors(folder, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# two files\n{folder / 'a/clean0.jpg'}\nfile://{folder / 'c/empty.jpg'}\n\n")
    summary = run_curation(listing, tmp_path / "out", config())
    assert summary["inputs"] == 2 and summary["kept"] == 1
    listing.write_text("https://example.com/x.jpg\n")
    with pytest.raises(UserError, match="remote URL"):
        run_curation(listing, tmp_path / "out2", config())
    with pytest.raises(UserError, match="input not found"):
        run_curation(tmp_path / "missing", tmp_path / "out3", config())
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images in"):
        run_curation(tmp_path / "empty", tmp_path / "out4", config())


def test_cli_curate_and_stats(folder, tmp_path, monkeypatch, capsys):
    modules = lensgen.cli.COMMAND_MODULES
    monkeypatch.setattr(lensgen.cli, "COMMAND_MODULES",
                        modules + [m for m in ["lensgen.data.curate.cli"] if m not in modules])
    cfg = tmp_path / "c.yaml"
    cfg.write_text("run:\n  shard_size: 8\n  workers: 1\nnsfw:\n  enabled: false\n")
    out = tmp_path / "out"
    assert lensgen.cli.main(["data", "curate", "--config", str(cfg), "--no-progress", str(folder), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "kept 5 of 16 inputs" in printed and "disabled" in printed
    assert lensgen.cli.main(["data", "stats", str(out)]) == 0
    assert "units: 2, scored 2, written 2" in capsys.readouterr().out
    assert lensgen.cli.main(["data", "curate", str(tmp_path / "nope"), str(out)]) == 2
    assert "input not found" in capsys.readouterr().err
    cfg.write_text("run:\n  shard_size: 0\n")
    assert lensgen.cli.main(["data", "curate", "--config", str(cfg), str(folder), str(tmp_path / "o2")]) == 2
    assert "c.yaml: run.shard_size: expected >= 1" in capsys.readouterr().err
    # the same --set syntax as every other command
    assert lensgen.cli.main(["data", "curate", "--set", "run.shard_size=0", str(folder), str(tmp_path / "o2")]) == 2
    assert "config: run.shard_size: expected >= 1" in capsys.readouterr().err


@pytest.mark.slow
def test_process_pool_and_ray_give_the_same_manifest(folder, reference, tmp_path):
    ref_out, _ = reference
    pool = run_curation(folder, tmp_path / "pool", config(workers=2))
    assert pool["workers"] == 2
    assert read_manifest(tmp_path / "pool").equals(read_manifest(ref_out))
    ray_summary = run_curation(folder, tmp_path / "ray", config(workers=2, executor="ray"))
    assert ray_summary["executor"] == "ray"
    assert read_manifest(tmp_path / "ray").equals(read_manifest(ref_out))
    assert shard_contents(tmp_path / "ray") == shard_contents(ref_out)
    assert [p.name for p in list_shards(tmp_path / "ray" / "shards")] == [p.name for p in list_shards(ref_out / "shards")]
