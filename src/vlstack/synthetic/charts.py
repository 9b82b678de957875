"""Synthetic charts: bar and line charts drawn with PIL, every value labelled, with ChartQA-style questions.

PIL rather than matplotlib: a chart renders in about a millisecond and the pixels
depend only on Pillow. Values are distinct integers, so "which is highest" has one
answer; `text` is the underlying data table, as ChartQA provides it.
"""

from __future__ import annotations

import random

from PIL import Image, ImageDraw

from vlstack.data.schema import ImageRef, Sample
from vlstack.synthetic.fonts import get_font
from vlstack.synthetic.scenes import Language, encode_image

CHART_TYPES = ("bar", "line")
TOPICS = {  # topic: {lang: (title, axis name, value name, categories)}
    "fruit": {"en": ("Fruit sales", "Fruit", "Sales", ("Apple", "Banana", "Cherry", "Grape", "Mango", "Pear")),
              "zh": ("水果销量", "水果", "销量", ("苹果", "香蕉", "樱桃", "葡萄", "芒果", "梨"))},
    "city": {"en": ("Visitors by city", "City", "Visitors", ("Paris", "Tokyo", "Cairo", "Lima", "Oslo", "Delhi")),
             "zh": ("各城市游客数", "城市", "游客数", ("北京", "上海", "广州", "成都", "杭州", "西安"))},
    "month": {"en": ("Monthly rainfall", "Month", "Rainfall",
                     ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")),
              "zh": ("月降雨量", "月份", "降雨量",
                     ("一月", "二月", "三月", "四月", "五月", "六月",
                      "七月", "八月", "九月", "十月", "十一月", "十二月"))},
}
PALETTE = ((66, 133, 244), (219, 68, 55), (244, 160, 0), (15, 157, 88), (171, 71, 188), (0, 172, 193))


def chart_sample(seed: int, index: int, lang: Language = "en", image_size: int = 256) -> Sample:
    """Chart `index` of corpus `seed`, `image_size` pixels wide, with one question answered by its values."""
    rng = random.Random(f"chart:{seed}:{index}")
    chart_type = rng.choice(CHART_TYPES)
    topic = "month" if chart_type == "line" else rng.choice(list(TOPICS))
    title, axis, unit, names = TOPICS[topic][lang]
    count = rng.randint(3, 6)
    if topic == "month":
        start = rng.randrange(len(names) - count + 1)
        picks = list(range(start, start + count))
    else:
        picks = rng.sample(range(len(names)), count)
    categories = [names[p] for p in picks]
    values = rng.sample(range(5, 96), count)
    kind, question, answer = _question(categories, values, axis, rng, lang)
    image = _render(chart_type, title, categories, values, rng, lang, image_size)
    table = "\n".join([f"{axis} | {unit}"] + [f"{c} | {v}" for c, v in zip(categories, values)])
    meta = {"source": "synthetic", "seed": seed, "index": index, "lang": lang, "chart_type": chart_type,
            "topic": topic, "values": dict(zip(categories, values)), "question_type": kind}
    return Sample(f"chart-{seed}-{index:06d}", "chart", [ImageRef("png", encode_image(image))],
                  text=table, question=question, answers=[answer], meta=meta)


def _question(categories: list[str], values: list[int], axis: str, rng: random.Random, lang: Language):
    """(type, question, answer) on a value, the highest, the lowest, a difference or the sum."""
    zh = lang == "zh"
    kind = rng.choice(("value", "max", "min", "difference", "sum"))
    a, b = rng.sample(range(len(categories)), 2)
    if kind == "value":
        q = f"{categories[a]}的数值是多少？" if zh else f"What is the value for {categories[a]}?"
        return kind, q, str(values[a])
    if kind in ("max", "min"):
        best = (max if kind == "max" else min)(range(len(values)), key=values.__getitem__)
        word = ("最高" if kind == "max" else "最低") if zh else ("highest" if kind == "max" else "lowest")
        q = f"哪个{axis}的数值{word}？" if zh else f"Which {axis.lower()} has the {word} value?"
        return kind, q, categories[best]
    if kind == "difference":
        q = f"{categories[a]}和{categories[b]}相差多少？" if zh else \
            f"What is the difference between {categories[a]} and {categories[b]}?"
        return kind, q, str(abs(values[a] - values[b]))
    return kind, ("所有数值的总和是多少？" if zh else "What is the sum of all values?"), str(sum(values))


def _render(chart_type: str, title: str, categories: list[str], values: list[int], rng: random.Random,
            lang: Language, width: int) -> Image.Image:
    height = width * 3 // 4
    size = max(8, width // 24)
    font, title_font = get_font(lang, size), get_font(lang, size * 5 // 4)
    image = Image.new("RGB", (width, height), tuple(rng.randint(245, 255) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    draw.text((width // 2, size // 2), title, font=title_font, fill=(20, 20, 20), anchor="mt")
    left, right, top, bottom = width // 12, width - width // 24, size * 3, height - size * 2
    draw.line((left, top, left, bottom, right, bottom), fill=(60, 60, 60), width=1)
    slot = (right - left) / len(values)
    scale = (bottom - top) / 100
    color = rng.choice(PALETTE)
    points = [(left + slot * (i + 0.5), bottom - v * scale) for i, v in enumerate(values)]
    if chart_type == "line":
        draw.line(points, fill=color, width=2)
    for (x, y), value, name in zip(points, values, categories):
        if chart_type == "bar":
            draw.rectangle((x - slot * 0.3, y, x + slot * 0.3, bottom), fill=color)
        else:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=color)
        draw.text((x, y - 2), str(value), font=font, fill=(20, 20, 20), anchor="md")
        draw.text((x, bottom + 3), name, font=font, fill=(20, 20, 20), anchor="mt")
    return image
