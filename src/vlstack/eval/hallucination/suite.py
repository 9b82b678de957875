"""A hallucination suite on disk: images with their ground-truth objects, faithful and hallucinated captions.

The folder holds:
- `lexicon.json`: the vocabulary of the objects, attributes and places (`Lexicon.save`);
- `scenes.jsonl`: one line per image, `{"image": "test/x.png", "split": "val" | "test",
  "objects": [{"object": "circle", "attributes": ["red"], "place": "left"}, ...],
  "captions": {"en": [faithful, hallucinated], ...}, "changed": 0, "change": "color"}`:
  the hallucinated caption is the faithful one with object `changed` altered (`change` says
  how) to something the image does not show;
- the images, at the paths the lines name.
The detector is calibrated on the `val` scenes and scored on the `test` ones; POPE asks about
the objects of the `test` scenes, CHAIR compares the model's captions of them with their objects.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image

from vlstack.errors import DataError
from vlstack.eval.hallucination.entities import LEXICON_FILE, Lexicon

SCENES_FILE = "scenes.jsonl"
SPLITS = ("val", "test")


@dataclass(frozen=True)
class SceneObject:
    """An object of a scene in the lexicon's canonical names."""

    object: str
    attributes: tuple[str, ...] = ()
    place: str | None = None

    @property
    def name(self) -> str:
        """Attributes then the object: "red circle", what POPE asks about."""
        return " ".join([*self.attributes, self.object])


@dataclass
class Scene:
    image: str
    """The image file, relative to the suite folder."""
    split: str
    objects: list[SceneObject]
    captions: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Language -> (faithful caption, hallucinated caption)."""
    changed: int = 0
    """Index of the object the hallucinated caption alters."""
    change: str = ""
    """What it alters (e.g. "color", "shape"): AUROC is also reported per kind of change."""

    def load_image(self, root: Path) -> Image.Image:
        with Image.open(root / self.image) as image:
            return image.convert("RGB")


@dataclass
class Suite:
    root: Path
    lexicon: Lexicon
    scenes: list[Scene]

    def split(self, name: str, limit: int | None = None) -> list[Scene]:
        """The scenes of `name` in file order, at most `limit`."""
        return [s for s in self.scenes if s.split == name][:limit]


def write_suite(folder: str | Path, lexicon: Lexicon, scenes: list[Scene]) -> Path:
    """Write `lexicon.json` and `scenes.jsonl` into `folder` (the images must already be there)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lexicon.save(folder / LEXICON_FILE)
    with (folder / SCENES_FILE).open("w", encoding="utf-8") as out:
        for scene in scenes:
            out.write(json.dumps(asdict(scene), ensure_ascii=False) + "\n")
    return folder


def read_suite(folder: str | Path) -> Suite:
    """The suite in `folder`; a missing file, a malformed line or a missing image is a DataError naming it."""
    folder = Path(folder)
    scenes_path = folder / SCENES_FILE
    if not scenes_path.is_file() or not (folder / LEXICON_FILE).is_file():
        raise DataError(f"{folder} is not a hallucination suite (it needs {LEXICON_FILE} and {SCENES_FILE}); "
                        "write a synthetic one with `vlstack data synth-eval OUT`")
    lexicon = Lexicon.load(folder / LEXICON_FILE)
    scenes = []
    for number, line in enumerate(scenes_path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            objects = [SceneObject(o["object"], tuple(o.get("attributes", ())), o.get("place"))
                       for o in record["objects"]]
            scene = Scene(record["image"], record["split"], objects,
                          {lang: tuple(pair) for lang, pair in record.get("captions", {}).items()},
                          int(record.get("changed", 0)), str(record.get("change", "")))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise DataError(f"{scenes_path}: line {number} is not a scene ({type(error).__name__}: {error})") from None
        if scene.split not in SPLITS:
            raise DataError(f"{scenes_path}: line {number} has split {scene.split!r}; valid: {', '.join(SPLITS)}")
        if not (folder / scene.image).is_file():
            raise DataError(f"{scenes_path}: line {number} names image {scene.image}, which is not in {folder}")
        unknown = sorted({o.object for o in objects} - set(lexicon.names["object"]))
        if unknown:
            raise DataError(f"{scenes_path}: line {number} has objects {unknown} that {LEXICON_FILE} does not list")
        scenes.append(scene)
    return Suite(folder, lexicon, scenes)
