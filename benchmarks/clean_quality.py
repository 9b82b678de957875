"""Do the cleaning defaults separate good data from bad on real inputs? Perplexity and near-duplicate rates.

Why: a filter tuned on synthetic scenes can drop half of a real corpus. This
measures the two default text and image filters on real material that ships with
the install, with the bad cases generated from it:

- Perplexity (the default word-frequency model, no reference corpus): the share
  of ordinary captions kept (English and Chinese captions written for this
  benchmark, and the corpus generator's captions), and the share dropped of
  gibberish (the generator's defect), character noise (30% of letters replaced)
  and mojibake (Chinese UTF-8 read as Latin-1), at the default limit.
- Near duplicates, through the cleaning run's `Deduplicator` (pHash within
  `dedup.max_hamming`, colour thumbnails within `dedup.max_colour_rms`): the
  photographs of `skimage.data`. Near copies of each (JPEG 70, half size, a 3%
  crop, brightness +8%, and all of crop + resize + JPEG 80) should be found, as
  should a 1 px shifted JPEG copy of a 32 px image; distinct images should be
  kept: the photographs themselves, and distinct low-resolution images (32 px
  thumbnails of 64 separate regions of each photograph, each photograph's
  sharing one caption, as in a CIFAR-like set). Both rates for each threshold
  from 4 to 16, with the colour check and without it.

Run: `python benchmarks/clean_quality.py` (seconds). Prints tables and writes
benchmarks/out/clean_quality.json.
"""

from __future__ import annotations

import argparse
import io
import json
import random
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image, ImageEnhance

from vlstack.data.clean.dedup import DedupConfig, Deduplicator, fingerprint
from vlstack.data.clean.perplexity import WordFrequencyLM
from vlstack.data.clean.pipeline import DedupStage
from vlstack.synthetic.defects import _gibberish
from vlstack.synthetic.scenes import caption_sample

PHOTOGRAPHS = ("astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
               "hubble_deep_field", "immunohistochemistry", "microaneurysms", "moon", "page", "retina", "rocket",
               "text", "colorwheel")
"""`skimage.data` images that load offline (`cat` is `chelsea` again; masks and renders left out)."""

CAPTIONS_EN = [
    "A man riding a bicycle down a city street.", "Two dogs playing with a ball in the park.",
    "A plate of pasta with tomato sauce and basil.", "A red double-decker bus parked near a bridge.",
    "A woman holding an umbrella in the rain.", "A cat sleeping on a wooden chair by the window.",
    "Children flying kites on a windy beach.", "A bowl of fresh fruit on a kitchen table.",
    "An airplane taking off from a busy airport.", "A group of people waiting at a train station.",
    "A small boat floating on a calm lake at sunset.", "A giraffe eating leaves from a tall tree.",
    "A laptop and a cup of coffee on a desk.", "Snow covered mountains under a clear blue sky.",
    "A skateboarder doing a trick on a ramp.", "A vase of yellow flowers next to a lamp.",
    "A baseball player swinging a bat during a game.", "A horse grazing in a green field.",
    "A pizza with mushrooms and cheese on a tray.", "A street sign at the corner of two roads.",
    "An old clock tower in the middle of a town square.", "A teddy bear sitting on a bed.",
    "A close-up photo of a microscope slide with stained cells.", "The surface of the moon seen through a telescope.",
    "A chest x-ray showing both lungs.", "A bar chart comparing sales in four regions.",
    "A scanned page of a printed book.", "Three people sitting around a campfire at night.",
    "A motorcycle parked outside a coffee shop.", "A kitchen with white cabinets and a steel fridge.",
    "A child eating an ice cream cone.", "A view of the city skyline from a rooftop.",
    "Two zebras standing near a watering hole.", "A tennis player reaching for the ball.",
    "A sandwich cut in half on a white plate.", "A rocket on its launch pad before liftoff.",
    "A photo of gravel and small stones.", "An astronaut in a white space suit holding a flag.",
    "A cup of coffee with latte art.", "Coins of different sizes on a dark table.",
]
CAPTIONS_ZH = [
    "一个男人在城市街道上骑自行车。", "两只狗在公园里玩球。", "一盘番茄酱意大利面。", "一辆红色的公共汽车停在桥边。",
    "一个女人在雨中撑着伞。", "一只猫睡在窗边的木椅上。", "孩子们在海边放风筝。", "厨房桌子上放着一碗新鲜水果。",
    "一架飞机从繁忙的机场起飞。", "一群人在火车站等车。", "夕阳下一只小船漂在平静的湖面上。", "一只长颈鹿在吃树叶。",
    "桌子上有一台笔记本电脑和一杯咖啡。", "蓝天下白雪覆盖的山峰。", "一个人在坡道上玩滑板。", "台灯旁边有一瓶黄色的花。",
    "一匹马在绿色的草地上吃草。", "一张放着蘑菇和奶酪的披萨。", "小镇广场中间有一座旧钟楼。", "床上坐着一只玩具熊。",
    "显微镜下染色的细胞。", "望远镜里看到的月球表面。", "一张显示双肺的胸部X光片。", "比较四个地区销售额的柱状图。",
    "一页扫描的印刷书页。", "晚上三个人围坐在篝火旁。", "咖啡店外停着一辆摩托车。", "一个孩子在吃冰淇淋。",
    "从屋顶看到的城市天际线。", "两只斑马站在水塘边。",
]


def character_noise(text: str, rng: random.Random, rate: float = 0.3) -> str:
    """Replace `rate` of the letters by random ones (OCR or transmission garbage)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    return "".join(rng.choice(letters) if c.isalpha() and c.isascii() and rng.random() < rate else c for c in text)


def mojibake(text: str) -> str:
    return text.encode("utf-8").decode("latin-1")


def perplexity_rates() -> dict:
    model = WordFrequencyLM()
    rng = random.Random(0)
    generated = [caption_sample(0, i).text for i in range(200)] + [caption_sample(0, i, "zh").text for i in range(100)]
    good = {"captions_en": CAPTIONS_EN, "captions_zh": CAPTIONS_ZH, "generator_captions": generated}
    bad = {
        "gibberish_en": [_gibberish(t, False, rng) for t in CAPTIONS_EN],
        "gibberish_zh": [_gibberish(t, True, rng) for t in CAPTIONS_ZH],
        "character_noise_en": [character_noise(t, rng) for t in CAPTIONS_EN],
        "mojibake_zh": [mojibake(t) for t in CAPTIONS_ZH],  # (ASCII English reads the same as Latin-1)
    }
    limit = model.default_limit
    rows = {}
    for group, texts in {**good, **bad}.items():
        scores = np.array(model.perplexities(texts))
        rows[group] = {
            "texts": len(texts), "kept": round(float(np.mean(scores <= limit)), 3),
            "median": round(float(np.median(scores)), 1), "min": round(float(scores.min()), 1),
            "max": round(float(scores.max()), 1), "good": group in good,
        }
    return {"limit": limit, "groups": rows, "examples": {k: v[0] for k, v in bad.items()}}


def photographs(side: int = 256) -> dict[str, Image.Image]:
    images = {}
    for name in PHOTOGRAPHS:
        pixels = getattr(skimage.data, name)()
        image = Image.fromarray(pixels).convert("RGB")
        image.thumbnail((side, side))
        images[name] = image
    return images


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def crop(image: Image.Image, share: float) -> Image.Image:
    w, h = image.size
    dx, dy = round(w * share), round(h * share)
    return image.crop((dx, dy, w - dx, h - dy))


NEAR_COPIES = {
    "jpeg70": lambda im: jpeg(im, 70),
    "half_size": lambda im: im.resize((im.width // 2, im.height // 2), Image.Resampling.BILINEAR),
    "crop3%": lambda im: crop(im, 0.03),
    "brightness+8%": lambda im: ImageEnhance.Brightness(im).enhance(1.08),
    "crop2%+resize0.75+jpeg80": lambda im: jpeg(crop(im, 0.02).resize((round(im.width * 0.75),
                                                                       round(im.height * 0.75))), 80),
}


def regions(image: Image.Image, grid: int = 8, side: int = 32) -> list[Image.Image]:
    """`grid` x `grid` separate regions of a photograph as `side` px thumbnails: distinct images."""
    w, h = image.size
    return [image.crop((x * w // grid, y * h // grid, (x + 1) * w // grid, (y + 1) * h // grid))
            .resize((side, side), Image.Resampling.LANCZOS) for y in range(grid) for x in range(grid)]


def shifted_copy(image: Image.Image) -> Image.Image:
    """A 32 px image shifted by a pixel and re-encoded (JPEG 75): a near copy at low resolution."""
    return jpeg(crop(image.resize((34, 34)), 1 / 34), 75)


def is_duplicate(original: Image.Image, copy: Image.Image, cfg: DedupConfig) -> bool:
    index = Deduplicator(cfg)
    index.check("original", fingerprint("", [original], cfg=cfg))
    return not index.check("copy", fingerprint("", [copy], cfg=cfg)).keep


def dropped_share(classes: dict[str, list[Image.Image]], cfg: DedupConfig) -> float:
    """Share of distinct images a cleaning run drops when each class shares one caption (`match: pair`)."""
    index, dropped, total = Deduplicator(cfg), 0, 0
    for name, images in classes.items():
        for number, image in enumerate(images):
            dropped += not index.check(f"{name}-{number}", fingerprint(f"a photo of {name}", [image], cfg=cfg)).keep
            total += 1
    return round(dropped / total, 4)


def duplicate_rates() -> dict:
    photos = photographs()
    low_res = {name: regions(image) for name, image in photographs(512).items()}
    copies = [(image, make(image)) for make in NEAR_COPIES.values() for image in photos.values()]
    low_res_copies = [(image, shifted_copy(image)) for images in low_res.values() for image in images[::4]]
    singles = {name: [image] for name, image in photos.items()}
    table = {}
    for colour in (DedupStage.max_colour_rms, None):
        for threshold in range(4, 17):
            cfg = DedupConfig(max_hamming=threshold, max_colour_rms=colour if colour is not None else float("inf"))
            table[f"{threshold}/{colour or 'off'}"] = {
                "max_hamming": threshold, "max_colour_rms": colour,
                "photo_copies_found": round(float(np.mean([is_duplicate(a, b, cfg) for a, b in copies])), 3),
                "low_res_copies_found": round(float(np.mean([is_duplicate(a, b, cfg) for a, b in low_res_copies])), 3),
                "distinct_photos_dropped": dropped_share(singles, cfg),
                "distinct_low_res_dropped": dropped_share(low_res, cfg),
            }
    return {"photographs": len(photos), "photo_copies": len(copies), "low_res_images": sum(map(len, low_res.values())),
            "low_res_copies": len(low_res_copies),
            "default": {"max_hamming": DedupStage.max_hamming, "max_colour_rms": DedupStage.max_colour_rms},
            "by_setting": table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/out/clean_quality.json")
    args = parser.parse_args()
    result = {"perplexity": perplexity_rates(), "dedup": duplicate_rates()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"perplexity limit {result['perplexity']['limit']:g}")
    print(f"{'group':24} {'texts':>5} {'kept':>6} {'median':>12} {'min':>12} {'max':>12}")
    for group, row in result["perplexity"]["groups"].items():
        print(f"{group:24} {row['texts']:5d} {row['kept']:6.3f} {row['median']:12g} {row['min']:12g} {row['max']:12g}")
    dedup = result["dedup"]
    print(f"\nnear duplicates: {dedup['photo_copies']} copies of {dedup['photographs']} photographs, "
          f"{dedup['low_res_copies']} copies of 32 px images, {dedup['low_res_images']} distinct 32 px images "
          f"(64 per caption); default {dedup['default']}")
    print(f"{'max_hamming':>11} {'colour rms':>10} {'copies found':>13} {'32px copies found':>18} "
          f"{'photos dropped':>15} {'32px distinct dropped':>22}")
    for row in dedup["by_setting"].values():
        print(f"{row['max_hamming']:11d} {str(row['max_colour_rms'] or 'off'):>10} {row['photo_copies_found']:13.3f} "
              f"{row['low_res_copies_found']:18.3f} {row['distinct_photos_dropped']:15.3f} "
              f"{row['distinct_low_res_dropped']:22.3f}")


if __name__ == "__main__":
    main()
