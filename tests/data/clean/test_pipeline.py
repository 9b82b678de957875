"""The cleaning pipeline end to end: defects caught, every id accounted for, executors agree, bad input."""

from __future__ import annotations

import io
import json
import re
import sys
import tarfile
import threading
import time

import numpy as np
import psutil
import pytest
from PIL import Image

from vlstack.config import load_config
from vlstack.data.clean.perplexity import WordFrequencyLM
from vlstack.data.clean.pipeline import CleanConfig, DedupStage
from vlstack.data.clean.relevance import calibrate_scorer
from vlstack.data.clean.run import REJECTED, SUMMARY, clean
from vlstack.data.executors import WorkerDied
from vlstack.data.schema import Sample
from vlstack.data.shards import read_manifest, read_shards, write_shards
from vlstack.errors import ConfigError
from vlstack.synthetic.corpus import make_sample, synthesize
from vlstack.synthetic.defects import DEFECT_TYPES
from vlstack.synthetic.truth import score_cleaning

TRUSTED_FIT, TRUSTED_CALIBRATE = 2000, 300


class NeighbourCaptionScorer:
    """A stand-in for a CLIP checkpoint, fitted on a trusted subset (none can be downloaded here).

    An image's neighbours are the `k` trusted images closest in a coarse layout descriptor
    (hue and edge-orientation histograms in left / middle / right bands); a text scores the
    best cosine of its word and word-pair counts with those neighbours' captions. A caption
    written for another picture finds no neighbour that was described like it.
    """

    def __init__(self, images: list[Image.Image], texts: list[str], k: int = 10):
        self.vocabulary: dict[str, int] = {}
        for text in texts:
            for word in _words(text):
                self.vocabulary.setdefault(word, len(self.vocabulary))
        self.images, self.texts, self.k = _layouts(images), self._bags(texts), k

    def score(self, images, texts) -> list[float]:
        neighbours = np.argsort(-(_layouts(images) @ self.images.T), axis=1)[:, : self.k]  # [B, k]
        bags = self._bags(texts)  # [B, V]
        return [float(np.max(self.texts[near] @ bag)) for near, bag in zip(neighbours, bags)]

    def _bags(self, texts: list[str]) -> np.ndarray:
        bags = np.zeros((len(texts), len(self.vocabulary)))
        for row, text in enumerate(texts):
            for word in _words(text):
                if word in self.vocabulary:
                    bags[row, self.vocabulary[word]] = 1
        return bags / np.maximum(np.linalg.norm(bags, axis=1, keepdims=True), 1e-9)


def _words(text: str) -> list[str]:
    words = re.findall(r"\w+", text.lower())
    return words + [f"{a} {b}" for a, b in zip(words, words[1:])]


def _layouts(images: list[Image.Image]) -> np.ndarray:
    rows = []
    for image in images:
        hsv = np.asarray(image.convert("RGB").resize((64, 64)).convert("HSV"), dtype=np.float64)  # [64, 64, 3]
        gy, gx = np.gradient(np.asarray(image.convert("L").resize((64, 64)), dtype=np.float64))
        magnitude, angle = np.hypot(gx, gy), (np.arctan2(gy, gx) % np.pi) / np.pi
        parts = []
        for band in np.array_split(np.arange(64), 3):
            hue, saturated = hsv[:, band, 0] / 256, hsv[:, band, 1] > 80
            hues = np.bincount((hue[saturated] * 12).astype(int), minlength=12) / hue.size
            edges = np.bincount((angle[:, band].ravel() * 6).astype(int) % 6, weights=magnitude[:, band].ravel(),
                                minlength=6)
            parts += [np.sqrt(hues), 0.5 * np.sqrt(edges / (edges.sum() + 1e-9))]
        rows.append(np.concatenate(parts))
    layouts = np.stack(rows)
    return layouts / np.maximum(np.linalg.norm(layouts, axis=1, keepdims=True), 1e-9)


def _decoded(sample: Sample) -> Image.Image:
    return Image.open(io.BytesIO(sample.images[0].data)).convert("RGB")


@pytest.fixture(scope="module")
def trusted(tmp_path_factory):
    """Clean held-out captions: the perplexity reference, and the relevance scorer's fitting set."""
    path = tmp_path_factory.mktemp("trusted")
    synthesize("caption", TRUSTED_FIT + TRUSTED_CALIBRATE, path, seed=1, split="val")
    return path


@pytest.fixture(scope="module")
def scorer_and_threshold(trusted):
    samples = [s for s in read_shards(trusted) if isinstance(s, Sample)]
    images, texts = [_decoded(s) for s in samples], [s.text for s in samples]
    scorer = NeighbourCaptionScorer(images[:TRUSTED_FIT], texts[:TRUSTED_FIT])
    calibration = calibrate_scorer(scorer, images[TRUSTED_FIT:], texts[TRUSTED_FIT:], max_clean_drop=0.02)
    return scorer, calibration.threshold


def config(trusted, threshold: float, **overrides) -> CleanConfig:
    cfg = CleanConfig(**overrides)
    cfg.perplexity.reference = str(trusted)
    cfg.relevance.min_score = threshold
    return cfg


@pytest.fixture(scope="module")
def spoiled(tmp_path_factory):
    """800 captions, half spoiled: every defect type about 21 times, with defects.jsonl as ground truth."""
    path = tmp_path_factory.mktemp("spoiled")
    synthesize("caption", 800, path, defects=0.5, seed=1, samples_per_shard=200)
    return path


@pytest.fixture(scope="module")
def cleaned(spoiled, trusted, scorer_and_threshold, tmp_path_factory):
    scorer, threshold = scorer_and_threshold
    out = tmp_path_factory.mktemp("cleaned")
    summary = clean(spoiled, out, config(trusted, threshold), workers=2, scorer=scorer)
    return out, summary


def test_every_injected_defect_is_caught_and_few_clean_samples_are_dropped(spoiled, cleaned):
    out, _ = cleaned
    truth = score_cleaning(spoiled, out)
    assert json.loads((out / "ground_truth.json").read_text()) == truth
    assert "Against the injected defects" in (out / "report.md").read_text()
    print("\ndefect                 injected  caught  recall  dropped")
    for name, row in truth["defects"].items():
        print(f"{name:22} {row['injected']:8} {row['caught']:7} {row['recall']:7.3f} {row['dropped']:8}")
    clean_row = truth["clean"]
    print(f"clean: {clean_row}")
    assert set(truth["defects"]) == set(DEFECT_TYPES)
    assert all(row["injected"] >= 20 for row in truth["defects"].values())
    assert {name: row["recall"] for name, row in truth["defects"].items() if row["recall"] < 0.95} == {}
    assert clean_row["wrongly_dropped_rate"] <= 0.05
    # shape scenes repeat short captions with near-identical renders: dedup drops them by design
    assert clean_row["dropped_rate"] - clean_row["wrongly_dropped_rate"] == pytest.approx(
        clean_row["natural_duplicates"] / clean_row["total"], abs=1e-3)


def test_every_input_id_is_kept_or_rejected_once(cleaned, spoiled):
    out, summary = cleaned
    inputs = [i for info in read_manifest(spoiled) for i in info.ids]
    kept = [s.id for s in read_shards(out)]
    rejected = [json.loads(line) for line in (out / REJECTED).read_text().splitlines()]
    assert sorted(kept + [r["id"] for r in rejected]) == sorted(inputs)
    assert summary["unaccounted"] == [] and summary["kept"] == len(kept)
    assert all(r["reasons"] and r["reason"] == r["reasons"][0] and r["detail"] for r in rejected)


def test_kept_samples_are_clean_and_carry_their_provenance(cleaned, spoiled):
    out, _ = cleaned
    truth = [json.loads(line) for line in (spoiled / "defects.jsonl").read_text().splitlines()]
    pii_values = {r["id"]: r["value"] for r in truth if r["type"].startswith("pii_")}
    kept = list(read_shards(out))
    for sample in kept:
        steps = sample.meta["clean"]
        assert {"decode", "blur", "perplexity", "relevance", "privacy"} <= set(steps)
        image = Image.open(io.BytesIO(sample.images[0].data))
        assert image.mode == "RGB" and not image.getexif()
        assert pii_values.get(sample.id, "\0") not in sample.text
    redacted = [s for s in kept if "text" in s.meta["clean"]["privacy"]]
    assert all(re.search(r"\[(EMAIL|PHONE|ID|CARD|IP)\]", s.text) for s in redacted)


def test_report_shows_counts_histograms_and_examples(cleaned):
    out, _ = cleaned
    report = (out / "report.md").read_text()
    for heading in ("## Stages", "## Rejections by reason", "## Scores", "## Against the injected defects",
                    "## Examples", "## Configuration"):
        assert heading in report
    for name in ("blur", "perplexity", "relevance"):
        assert f"![{name}]({name}.png)" in report
        assert (out / f"{name}.png").read_bytes().startswith(b"\x89PNG")
    assert json.loads((out / "clean.json").read_text())["config"]["blur"]["max_score"] == 0.7


def test_kept_ids_do_not_depend_on_the_number_of_workers(spoiled, trusted, scorer_and_threshold, tmp_path):
    scorer, threshold = scorer_and_threshold
    small = tmp_path / "in"
    write_shards([s for s in read_shards(spoiled) if isinstance(s, Sample)][:150], small, samples_per_shard=40)
    runs = [clean(small, tmp_path / f"out{w}", config(trusted, threshold), workers=w, scorer=scorer)
            for w in (1, 2)]
    assert _ids(tmp_path / "out1") == _ids(tmp_path / "out2")
    assert runs[0]["by_reason"] == runs[1]["by_reason"]


def _ids(out) -> tuple[list[str], list[tuple]]:
    rejected = [json.loads(line) for line in (out / REJECTED).read_text().splitlines()]
    return [s.id for s in read_shards(out)], [(r["id"], tuple(r["reasons"])) for r in rejected]


@pytest.mark.slow
def test_ray_keeps_the_same_ids_as_local(spoiled, trusted, scorer_and_threshold, tmp_path):
    ray = pytest.importorskip("ray")
    scorer, threshold = scorer_and_threshold
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import a test module
    small = tmp_path / "in"
    write_shards([s for s in read_shards(spoiled) if isinstance(s, Sample)][:200], small, samples_per_shard=50)
    local = clean(small, tmp_path / "local", config(trusted, threshold), workers=2, scorer=scorer)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = clean(small, tmp_path / "ray", config(trusted, threshold), executor="ray", workers=2, scorer=scorer)
    finally:
        ray.shutdown()
    assert _ids(tmp_path / "local") == _ids(tmp_path / "ray")
    assert local["by_reason"] == remote["by_reason"] and local["kept"] > 0


# --- damaged and malformed input --------------------------------------------------------------


def _damaged_corpus(path):
    """5 shards of 12: #1 overwritten in the middle, #2 truncated, #3 with a bad JSON and a missing image,
    #4 deleted; #0 intact."""
    samples = [make_sample("caption", 9, i) for i in range(60)]
    infos = write_shards(samples, path, samples_per_shard=12)
    corrupt = bytearray((path / infos[1].shard).read_bytes())
    corrupt[3000:9000] = bytes(range(256)) * 23 + bytes(112)
    (path / infos[1].shard).write_bytes(bytes(corrupt))
    truncated = path / infos[2].shard
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    _rewrite_members(path / infos[3].shard)
    (path / infos[4].shard).unlink()
    return samples


def _rewrite_members(shard):
    """Break the first sample's JSON and drop the second sample's image."""
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for member, data in members:
            if member.name == "000000037.png":
                continue
            if member.name == "000000036.json":
                data = b'{"id": "caption-27-000036", "kind": '
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))


def test_damaged_shards_never_stop_the_run_and_lose_no_id(tmp_path, trusted):
    ids = [s.id for s in _damaged_corpus(tmp_path / "in")]
    summary = clean(tmp_path / "in", tmp_path / "out", config(trusted, 0.0))
    kept = {s.id for s in read_shards(tmp_path / "out")}
    records = [json.loads(line) for line in (tmp_path / "out" / REJECTED).read_text().splitlines()]
    reason = {r["id"]: r["reason"] for r in records if r["id"] is not None}
    assert summary["unaccounted"] == [] and set(ids) == kept | set(reason) and not kept & set(reason)
    assert set(ids[:12]) <= kept  # the intact shard
    overwritten = {reason.get(i, "kept") for i in ids[12:24]}  # read up to the damage, the rest reported
    assert "lost_in_shard" in overwritten and overwritten <= {"kept", "lost_in_shard", "unreadable_shard"}
    assert set(ids[24:31]) <= kept and {reason[i] for i in ids[31:36]} == {"unreadable_shard"}  # truncated
    assert (reason[ids[36]], reason[ids[37]]) == ("lost_in_shard", "missing_image")
    assert {reason[i] for i in ids[48:]} == {"missing_shard"}
    anonymous = sorted(r["reason"] for r in records if r["id"] is None)  # members without a readable id
    assert "bad_json" in anonymous and "missing_json" in anonymous


def test_a_bad_config_key_is_an_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match=r"'blur\.max_scor'.*valid keys: .*max_score"):
        load_config(CleanConfig, overrides=["blur.max_scor=0.5"])
    recipe = tmp_path / "clean.yaml"
    recipe.write_text("dedup:\n  max_haming: 3\n")
    with pytest.raises(ConfigError, match="max_haming"):
        load_config(CleanConfig, recipe)
    with pytest.raises(ConfigError, match=r"relevance\.kinds.*photo"):
        load_config(CleanConfig, overrides=["relevance.kinds=[photo]"])


def test_the_shipped_recipe_is_the_defaults():
    assert load_config(CleanConfig, "configs/clean.yaml") == CleanConfig()


def test_the_defaults_clean_with_no_reference_to_supply(spoiled, tmp_path):
    """Out of the box: the word-frequency perplexity model catches the gibberish, and no clean text goes."""
    clean(spoiled, tmp_path / "out", CleanConfig(dedup=DedupStage(enabled=False)))
    recorded = json.loads((tmp_path / "out" / SUMMARY).read_text())["config"]["perplexity"]["max_perplexity"]
    assert recorded == WordFrequencyLM.default_limit  # the limit used is in clean.json
    truth = score_cleaning(spoiled, tmp_path / "out")
    assert truth["defects"]["gibberish"]["recall"] == 1.0
    assert "perplexity" not in truth["clean"]["wrongly_dropped_by_reason"]


def test_config_problems_stop_the_run_before_it_writes(spoiled, tmp_path):
    with pytest.raises(ConfigError, match="'perplexity.reference' '.*nowhere' does not exist"):
        clean(spoiled, tmp_path / "out", load_config(CleanConfig, overrides=[f"perplexity.reference={tmp_path}/nowhere"]))
    assert not (tmp_path / "out").exists()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        clean(spoiled, tmp_path / "busy", load_config(CleanConfig, overrides=["perplexity.enabled=false"]))
    with pytest.raises(ConfigError, match="unknown executor"):
        clean(spoiled, tmp_path / "out", executor="spark")


def test_cli_cleans_with_overrides(spoiled, trusted, tmp_path, capsys):
    from vlstack.cli import main

    small = tmp_path / "in"
    write_shards([s for s in read_shards(spoiled) if isinstance(s, Sample)][:40], small)
    args = ["data", "clean", str(small), str(tmp_path / "out"), "--config", "configs/clean.yaml",
            "--set", f"perplexity.reference={trusted}", "--set", "dedup.enabled=false", "--workers", "1"]
    assert main(args) == 0
    assert "report:" in capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "clean.json").read_text())
    assert summary["config"]["dedup"]["enabled"] is False and summary["total"] == 40
    assert main(args[:4] + ["--set", "dedup.nope=1"]) == 2


def test_a_killed_worker_ends_the_run_with_what_was_done_written(spoiled, trusted, scorer_and_threshold, tmp_path):
    """SIGKILL one of two workers mid-run: the run stops at once (it does not wait on the dead worker),
    keeps the shards so far, and clean.json says it is incomplete and which ids are unaccounted for."""
    scorer, threshold = scorer_and_threshold
    outcome: dict = {}

    def run() -> None:
        try:
            clean(spoiled, tmp_path / "out", config(trusted, threshold, batch_size=4), workers=2, scorer=scorer)
        except WorkerDied as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    victim = None
    while victim is None and thread.is_alive():
        servers = [p for p in psutil.Process().children() if "forkserver" in " ".join(p.cmdline())]
        workers = [worker for server in servers for worker in server.children()]
        victim = workers[0] if len(workers) >= 2 else None
        time.sleep(0.2)
    assert victim is not None, "the run ended before its workers could be seen"
    victim.kill()
    thread.join(timeout=120)
    assert not thread.is_alive(), "the run hangs on its dead worker"
    assert "exit code -9" in str(outcome.get("error")), outcome
    summary = json.loads((tmp_path / "out" / SUMMARY).read_text())
    kept = {s.id for s in read_shards(tmp_path / "out")}
    rejected = {json.loads(line)["id"] for line in (tmp_path / "out" / REJECTED).read_text().splitlines()}
    assert summary["complete"] is False and summary["unaccounted"]
    assert len(kept) + len(rejected) + len(summary["unaccounted"]) == 800
