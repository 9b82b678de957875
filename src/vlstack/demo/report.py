"""The demo's report: every stage's figures in Markdown, against chance and baselines."""

from __future__ import annotations

from pathlib import Path

from vlstack.train.finetune import eval_line


def markdown(report: dict, out_dir: Path) -> str:
    p = report["stages"]["pretrain"]
    before, after = p["before_training"], p["after_training"]
    losses = ", ".join(f"{k} {v:.3f}" for k, v in p["final_losses"].items())
    lines = [
        "# vlstack demo report",
        "",
        f"Total time: {report['total_seconds']} s on {report['versions']['machine']}, "
        f"torch {report['versions']['torch']}.",
        "",
        *_headline_markdown(report["stages"]),
        f"## Pretraining ({p['objective']})",
        "Model: " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in p["parameters"].items()),
        "",
        "- corpus: " + "; ".join(f"{split} {c['kept']} of {c['total']} scenes kept by `data clean`"
                                 + (f" (dropped: {', '.join(f'{k} {v}' for k, v in c['by_first_reason'].items())})"
                                    if c["by_first_reason"] else "") for split, c in p["corpus"].items()),
        f"- {p['steps']} steps in {p['seconds']} s; loss {p['first_loss']:.3f} -> {p['final_loss']:.3f} "
        f"({losses}); {p['skipped_steps']} skipped steps",
        f"- checkpoint: `{p['checkpoint']}`",
        "",
        "![loss curves](loss.png)",
        "",
        "## Held-out evaluation",
        "",
        "| | image->text R@1 | R@5 | ITM accuracy | word accuracy (the LM path's summary names its caption) |",
        "|---|---|---|---|---|",
        f"| chance | {after['chance@1']:.3f} | {after['chance@5']:.3f} | {after['itm_chance']:.3f} | 0.500 |",
        f"| before training | {before['r@1']:.3f} | {before['r@5']:.3f} | {before['itm_accuracy']:.3f} "
        f"| {before['word_accuracy']:.3f} |",
        f"| after training | {after['r@1']:.3f} | {after['r@5']:.3f} | {after['itm_accuracy']:.3f} "
        f"| {after['word_accuracy']:.3f} |",
        "",
        *_clean_markdown(report["stages"]["clean"], out_dir),
        *_tuning_markdown(report["stages"]["finetune"], report["stages"]["align"]),
        "## Benchmarks (synthetic suites in the official formats)",
        "",
        "The headline table above; every question, answer and score, and each metric broken down: "
        f"[{report['stages']['eval']['report']}]({Path(report['stages']['eval']['report']).relative_to(out_dir)}).",
        "",
        *_hallucination_markdown(report["stages"]["hallucination"]),
        *_deployment_markdown(report["stages"]["deployment"]),
        *_apps_markdown(report["stages"]["apps"]),
    ]
    return "\n".join(lines)


def _headline_markdown(stages: dict) -> list[str]:
    """What a user of the final (aligned) model gets: the benchmarks through `vlstack eval` against the same
    questions answered blind, POPE per setting, CHAIR, refusals and the hallucination detector."""
    benchmarks, h = stages["eval"]["benchmarks"], stages["hallucination"]
    safety = stages["finetune"]["eval"].get("safety", {})
    refused = sum(b["refused"] for b in benchmarks.values()) / max(len(benchmarks), 1)
    chair = h["chair"]
    rows = [(f"{name} {b['metric']} ({b['questions']} questions)", _with_interval(b["value"], b["interval"]),
             f"blind {_fmt1(b['blind'])}; in a training phrasing {_fmt1(b.get('trained_phrasing'))}")
            for name, b in benchmarks.items()]
    rows += [(f"POPE {setting} ({m['questions']} questions): accuracy / F1 / yes ratio",
              f"{m['accuracy']:.3f} / {m['f1']:.3f} / {m['yes_ratio']:.3f}", "chance 0.5; yes ratio 0.5")
             for setting, m in h["pope"].items()]
    rows += [("CHAIR_s / CHAIR_i, object mentions per caption",
              f"{chair['chair_s']:.2f} / {chair['chair_i']:.2f}, {chair['mentions'] / max(chair['captions'], 1):.2f}",
              f"{chair['captions']} captions"),
             ("refused: held-out harmful / benign look-alikes / benchmark questions",
              f"{_fmt(safety.get('harmful_refusal_rate'))} / {_fmt(safety.get('safe_refusal_rate'))} / {refused:.2f}",
              "want 1 / 0 / 0"),
             ("hallucination detector AUROC (held-out captions)", f"{h['auroc']:.3f}", "chance 0.5")]
    rows += [(f"fine-tuning stage {name}: validation token accuracy (on as many training samples; gap)",
              f"{st['fit']['validation']['token_acc']:.3f} ({st['fit']['train']['token_acc']:.3f}; "
              f"{st['fit']['gap']['token_acc']:+.3f})", f"validation loss {st['fit']['validation']['loss']:.3f}")
             for name, st in stages["finetune"]["stages"].items() if st.get("fit")]
    rows += [(f"fine-tuning: held-out {name} accuracy (on training samples; gap)",
              f"{f['accuracy']:.3f} ({_fmt(f.get('train_accuracy'))}; {f['gap']:+.3f})" if "gap" in f
              else f"{f['accuracy']:.3f}", f"blind {_fmt(f.get('blind_baseline'))}")
             for name, f in stages["finetune"]["eval"].items()]
    return ["## The final model, as a user meets it", "",
            "The aligned model through `vlstack eval` (official prompts and metrics, on synthetic suites in the "
            "official formats); ± is the 95% interval; blind: the same questions with a uniform grey image; in a "
            "training phrasing: the same questions asked as the instruction data asks them (the bare question).", "",
            "| figure | value | baseline |", "|---|---|---|", *[f"| {a} | {b} | {c} |" for a, b, c in rows], ""]


def _with_interval(value: float, half_width: float | None) -> str:
    return f"{value:.1f}" if half_width is None else f"{value:.1f} ± {half_width:.1f}"


def _fmt1(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _clean_markdown(c: dict, out_dir: Path) -> list[str]:
    worst = min(c["recall"].values())
    return [
        "## Data cleaning",
        "",
        f"{c['samples']} synthetic captions, half spoiled with every defect type; the pretrained model's ITC "
        f"heads score image-text relevance (threshold calibrated on trusted pairs: {c['relevance_threshold']}). "
        f"{c['kept']} kept, {c['rejected']} rejected with reasons, {c['unaccounted']} unaccounted; "
        f"{c['samples_per_second']} samples/s. Full report with histograms: "
        f"[{c['report']}]({Path(c['report']).relative_to(out_dir)}).",
        "",
        f"Recall per injected defect (lowest {worst:.2f}); clean samples wrongly dropped: "
        f"{c['clean_wrongly_dropped_rate']:.3f} (natural duplicates dropped by dedup: {c['natural_duplicates']}).",
        "",
        "| defect | recall |",
        "|---|---|",
        *[f"| {name} | {recall:.2f} |" for name, recall in c["recall"].items()],
        "",
    ]


def _apps_markdown(a: dict) -> list[str]:
    med, insp, pc = a["medical"], a["inspection"], a["pointcloud"]
    scripted, model = a["embodied_scripted"], a["embodied_model"]
    return [
        "## Applications",
        "",
        f"- **Medical (DICOM)**: {med['series']} series in {med['studies']} studies, {med['files_skipped']} files "
        f"skipped with reasons; identifier leaks {len(med['identifier_leaks'])} of {med['identifiers_checked']} "
        f"checked in every output; lesion accuracy {_fmt(med['lesion_accuracy'])} "
        f"(majority {_fmt(med['lesion_majority_baseline'])}). Report: `{med['report']}`.",
        f"- **Inspection**: detector precision {insp['precision']:.2f} / recall {insp['recall']:.2f} "
        f"(local anomaly {insp['local_precision']:.2f} / {insp['local_recall']:.2f}); "
        f"{insp['frames_per_second']:.1f} frames/s end to end, detector alone {insp['detector_frames_per_second']:.0f} "
        f"frames/s; defect type named right {_fmt(insp['type_accuracy'])} "
        f"(majority {_fmt(insp['type_majority_baseline'])}). Report: `{insp['report']}`.",
        f"- **Point clouds**: held-out shape accuracy {pc['test_accuracy']:.3f} (chance {pc['chance']:.2f}; "
        "five rotated, noisy shapes).",
        f"- **Embodied (MiniGrid-Empty-5x5)**: scripted planner {'solved' if scripted['success'] else 'failed'} in "
        f"{scripted['steps']} steps with {scripted['plans'] - 1} replan(s); the model as planner: success rate "
        f"{model['success_rate']:.2f} over {model['episodes']} episode(s).",
        "",
    ]


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _hallucination_markdown(h: dict) -> list[str]:
    t = h["thresholds"]
    return [
        "## Hallucination",
        "",
        f"Entity-level detector on the pretrained ITC scores: AUROC {h['auroc']:.3f} on held-out faithful vs "
        f"hallucinated captions (chance 0.5); calibrated thresholds {t['low']:.3f} / {t['high']:.3f} "
        "(the article's 0.15 / 0.3 are for its own scorer), stored with the checkpoint. "
        f"CHAIR_s {h['chair']['chair_s']:.2f}, CHAIR_i {h['chair']['chair_i']:.2f} over "
        f"{h['chair']['captions']} generated captions.",
        "",
        "| POPE setting | accuracy | precision | recall | F1 | yes ratio |",
        "|---|---|---|---|---|---|",
        *[f"| {name} | {m['accuracy']:.3f} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | "
          f"{m['yes_ratio']:.3f} |" for name, m in h["pope"].items()],
        "",
    ]


def _deployment_markdown(d: dict) -> list[str]:
    f = d["figures"]
    q, o, c = f["int8_dynamic"], f["onnx"], f["feature_cache"]
    return [
        "## Deployment",
        "",
        f"- int8 dynamic quantization: held-out retrieval change in points: {_items(q['retrieval_delta_points'])}; "
        f"speed-up {_items(q['speedup'])}; weights {q['weight_bytes']['fp32'] / 1e6:.1f} MB -> "
        f"{q['weight_bytes']['int8'] / 1e6:.1f} MB.",
        f"- ONNX vision + projector: max |ONNX Runtime - PyTorch| {o['parity_max_abs_diff']:.2e}; "
        "share of answers identical "
        f"to PyTorch: {_items(o['identical_answers'])}.",
        f"- Image-feature cache: hit rate {c['hit_rate']:.2f}; vision path cold {c['cold_ms']:.1f} ms vs warm "
        f"{c['warm_ms']:.2f} ms.",
        "",
    ]


def _items(values: dict | None) -> str:
    return "n/a" if not values else ", ".join(f"{k} {v:.2f}" for k, v in values.items())


def _fit(fit: dict | None) -> str:
    """A stage's validation loss | token accuracy on training samples / validation (gap), or n/a."""
    if not fit:
        return "n/a | n/a"
    accuracy = fit["validation"].get("token_acc")
    return (f"{fit['validation']['loss']:.3f} | {fit['train'].get('token_acc', 0):.3f} / {accuracy:.3f} "
            f"({fit['gap'].get('token_acc', 0):+.3f})")


def _tuning_markdown(f: dict, a: dict) -> list[str]:
    lines = ["## Instruction tuning and alignment", "",
             "| stage | steps | loss | conversations | validation loss | token accuracy: train / validation (gap) "
             "| seconds |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {name} | {st['steps']} | {st['first_loss']:.3f} -> {st['final_loss']:.3f} | {st['samples']} | "
              f"{_fit(st.get('fit'))} | {st['seconds']} |" for name, st in f["stages"].items()]
    lines += ["", "After the safety stage:", ""]
    lines += [f"- {eval_line(name, figures)}" for name, figures in f["eval"].items()]
    lines += ["", f"DPO ({a['steps']} steps): held-out VQA accuracy {a['vqa_accuracy_before']:.3f} -> "
              f"{a['vqa_accuracy_after']:.3f}; held-out implicit-reward accuracy {a['held_out_reward_accuracy']:.3f} "
              "(chance 0.5).", ""]
    return lines
