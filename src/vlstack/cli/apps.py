"""The application commands: `vlstack medical`, `inspect` and `embodied`."""

from __future__ import annotations

import argparse

from vlstack.cli.parsing import add_command, configured


def add_app_commands(commands) -> None:
    medical = add_command(commands, "medical", "Findings per series of a DICOM study folder, de-identified first.",
                       "Reads every file under STUDY_DIR, de-identifies it (PS3.15 Table E.1-1 basic profile; UIDs "
                       "remapped with a keyed hash: set $VLSTACK_DEID_KEY to keep pseudonyms stable across runs), "
                       "groups studies and series, renders the middle slice of each and asks the model about it. "
                       "Writes OUT/report.json, OUT/report.html and OUT/thumbnails/; unusable files are listed "
                       "with a reason. A series whose pixels may show identifiers (burned-in text: ultrasound, "
                       "secondary captures, scans, or BurnedInAnnotation=YES) is flagged; --refuse-burned-in skips "
                       "it. Every MedicalConfig field can be --set (e.g. show_paths=true).")
    medical.add_argument("study_dir", metavar="STUDY_DIR", help="folder of DICOM files (searched recursively)")
    medical.add_argument("--model", required=True, metavar="CKPT", help="checkpoint directory")
    medical.add_argument("--out", required=True, metavar="DIR", help="output directory")
    medical.add_argument("--lang", choices=("zh", "en"), help="language of the default prompt (default: zh)")
    medical.add_argument("--prompt", help="the question asked about every series (default: the findings prompt)")
    medical.add_argument("--refuse-burned-in", action="store_true",
                         help="neither render nor ask about a series whose pixels may show identifiers")
    medical.set_defaults(handler=_medical)

    inspect = add_command(commands, "inspect", "Inspect an image folder or a video for surface defects.",
                       "Each frame goes through the detector; each defect crop is analysed by the model. Writes "
                       "OUT/report.jsonl (one line per frame, flushed as it goes), OUT/summary.json with frames/s, "
                       "and OUT/report.html with annotated frames. Every InspectionConfig field can be --set "
                       "(e.g. classical.threshold=6).")
    inspect.add_argument("source", metavar="SOURCE", help="an image folder or a video file")
    inspect.add_argument("--model", required=True, metavar="CKPT", help="checkpoint directory")
    inspect.add_argument("--out", required=True, metavar="DIR", help="output directory")
    inspect.add_argument("--reference", metavar="IMAGE", help="an image of a good part for the classical detector "
                                                              "(default: detect local anomalies)")
    inspect.add_argument("--yolo", metavar="WEIGHTS", help="use an ultralytics YOLO weights file as the detector "
                                                           "(pip install ultralytics)")
    inspect.add_argument("--lang", choices=("zh", "en"), help="language of the default prompt (default: zh)")
    inspect.add_argument("--prompt", help="the question asked about every defect crop")
    inspect.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames")
    inspect.set_defaults(handler=_inspect)

    embodied = add_command(commands, "embodied", "Run MiniGrid episodes with a checkpoint as the planner.",
                        "The model sees the agent's view and a depth map and replies with a JSON plan; each step "
                        "is checked against the new state and a failure triggers a replan, within budgets. Writes "
                        "OUT/episode-SEED/transcript.jsonl (+ frames) and OUT/summary.json. Every EmbodiedConfig "
                        "field can be --set (e.g. episode.max_plans=3).")
    embodied.add_argument("--env", default="MiniGrid-Empty-5x5-v0", help="a MiniGrid environment id "
                                                                          "(default: %(default)s)")
    embodied.add_argument("--model", required=True, metavar="CKPT", help="checkpoint directory")
    embodied.add_argument("--out", required=True, metavar="DIR", help="output directory")
    embodied.add_argument("--episodes", type=int, help="number of episodes, on seeds 0, 1, ... (default: 1)")
    embodied.set_defaults(handler=_embodied)


def _medical(args: argparse.Namespace) -> int:
    from vlstack.apps.medical import MedicalConfig, run_medical

    flags = {"language": args.lang, "prompt": args.prompt, "refuse_burned_in": args.refuse_burned_in or None}
    config = configured(MedicalConfig, flags, args.overrides)
    counts = run_medical(args.study_dir, args.model, args.out, config)["counts"]
    print(f"{counts['studies']} studies, {counts['series']} series, {counts['answered']} answered, "
          f"{counts['files_skipped']} files skipped; report: {args.out}/report.html")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from vlstack.apps.inspection import InspectionConfig, run_inspection

    flags = {"language": args.lang, "prompt": args.prompt, "reference": args.reference, "max_frames": args.max_frames,
             "yolo_weights": args.yolo, "detector": "yolo" if args.yolo else None}
    config = configured(InspectionConfig, flags, args.overrides)
    summary = run_inspection(args.source, args.model, args.out, config)
    print(f"{summary['frames']} frames, {summary['defects']} defects in {summary['frames_with_defects']} frames, "
          f"{summary['frames_per_second']} frames/s; report: {args.out}/report.html")
    return 0


def _embodied(args: argparse.Namespace) -> int:
    from vlstack.apps.embodied import EmbodiedConfig, run_minigrid_episodes

    flags = {"episodes": args.episodes}
    config = configured(EmbodiedConfig, flags, args.overrides)
    summary = run_minigrid_episodes(args.model, args.env, args.out, config)
    print(f"{args.env}: success rate {summary['success_rate']:.2f} over {summary['episodes']} episode(s), "
          f"mean plans {summary['mean_plans']:.1f}, mean steps {summary['mean_steps']:.1f}; "
          f"summary: {args.out}/summary.json")
    return 0
