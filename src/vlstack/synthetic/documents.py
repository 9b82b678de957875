"""Synthetic documents: forms, receipts and invoices rendered with PIL, with OCR questions.

Each document is a pure function of (seed, index): its fields are drawn first (in
the same way for both languages, so an English and a Chinese corpus share their
structure), then rendered. The sample's `text` is the exact transcription, the
question asks for one field, and the answer is the string as drawn — totals are
the sum of the drawn item prices.
"""

from __future__ import annotations

import random

from PIL import Image, ImageDraw

from vlstack.data.schema import ImageRef, Sample
from vlstack.synthetic.fonts import get_font
from vlstack.synthetic.scenes import Language, encode_image

DOC_TYPES = ("form", "receipt", "invoice")
TITLES = {"invoice": ("INVOICE", "发票"), "receipt": ("RECEIPT", "收据"), "form": ("MEMBERSHIP FORM", "会员登记表")}
FIELDS = {
    "invoice": ("invoice_no", "date", "bill_to"),
    "receipt": ("store", "date", "time", "payment"),
    "form": ("name", "member_no", "department", "start_date", "plan"),
}
LABELS = {  # field: (English label, Chinese label, English question, Chinese question)
    "invoice_no": ("Invoice No.", "发票号码", "What is the invoice number?", "发票号码是多少？"),
    "date": ("Date", "日期", "What is the date?", "日期是哪天？"),
    "bill_to": ("Bill to", "购买方", "Who is the invoice billed to?", "购买方是谁？"),
    "store": ("Store", "商店", "Which store issued the receipt?", "这张收据来自哪家商店？"),
    "time": ("Time", "时间", "At what time was the purchase made?", "购买时间是几点？"),
    "payment": ("Payment", "支付方式", "How was the purchase paid?", "支付方式是什么？"),
    "name": ("Name", "姓名", "What is the member's name?", "会员姓名是什么？"),
    "member_no": ("Member No.", "会员编号", "What is the member number?", "会员编号是多少？"),
    "department": ("Department", "部门", "Which department is on the form?", "表上填写的部门是什么？"),
    "start_date": ("Start date", "开始日期", "What is the start date?", "开始日期是哪天？"),
    "plan": ("Plan", "套餐", "Which plan was chosen?", "选择了哪个套餐？"),
    "total": ("Total", "合计", "What is the total amount?", "合计金额是多少？"),
}
VOCAB = {  # category: (English words, Chinese words), aligned by position
    "bill_to": (("Northwind Traders", "Blue Harbor Ltd", "Maple Systems", "Orbit Supplies"),
                ("华信科技有限公司", "东方贸易公司", "蓝海物流", "星河文具店")),
    "store": (("Corner Cafe", "Green Grocer", "City Books", "Sunny Bakery"),
              ("街角咖啡", "绿色果蔬店", "城市书店", "阳光面包房")),
    "payment": (("Cash", "Card"), ("现金", "银行卡")),
    "name": (("Alice Martin", "Wei Zhang", "Carlos Diaz", "Priya Nair"), ("张伟", "李娜", "王芳", "刘洋")),
    "department": (("Sales", "Research", "Finance", "Design"), ("销售部", "研发部", "财务部", "设计部")),
    "plan": (("Basic", "Standard", "Premium"), ("基础版", "标准版", "高级版")),
    "item": (("Coffee", "Notebook", "Pencil", "Apple", "Bread", "Tea", "Stapler", "Milk"),
             ("咖啡", "笔记本", "铅笔", "苹果", "面包", "茶", "订书机", "牛奶")),
}


def document_sample(seed: int, index: int, lang: Language = "en", image_size: int = 256) -> Sample:
    """Document `index` of corpus `seed`, `image_size` pixels wide, with one question on a field or an item."""
    rng = random.Random(f"document:{seed}:{index}")
    doc_type = rng.choice(DOC_TYPES)
    zh = lang == "zh"
    fields = {name: _value(name, rng, zh) for name in FIELDS[doc_type]}
    items = []
    if doc_type != "form":
        currency = "¥" if zh else "$"
        for pick in rng.sample(range(len(VOCAB["item"][0])), rng.randint(2, 4)):
            items.append((VOCAB["item"][zh][pick], rng.randint(50, 5000)))
        fields["total"] = f"{currency}{sum(cents for _, cents in items) / 100:.2f}"
        items = [(name, f"{currency}{cents / 100:.2f}") for name, cents in items]
    title = TITLES[doc_type][zh]
    colon = "：" if zh else ": "
    lines = [title] + [f"{LABELS[k][zh]}{colon}{v}" for k, v in fields.items() if k != "total"]
    lines += [f"{name} {price}" for name, price in items]
    if "total" in fields:
        lines.append(f"{LABELS['total'][zh]}{colon}{fields['total']}")
    question, answer, asked = _question(fields, items, rng, zh)
    image = _render(title, fields, items, colon, rng, lang, image_size)
    meta = {"source": "synthetic", "seed": seed, "index": index, "lang": lang, "doc_type": doc_type,
            "fields": fields, "items": [list(item) for item in items], "asked": asked}
    return Sample(f"document-{seed}-{index:06d}", "document", [ImageRef("png", encode_image(image))],
                  text="\n".join(lines), question=question, answers=[answer], meta=meta)


def _value(name: str, rng: random.Random, zh: bool) -> str:
    if name in VOCAB:
        return rng.choice(VOCAB[name][zh])
    if name in ("date", "start_date"):
        return f"{rng.randint(2019, 2025)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    if name == "time":
        return f"{rng.randint(8, 21):02d}:{rng.randint(0, 59):02d}"
    if name == "invoice_no":
        return f"INV-{rng.randint(10000, 99999)}"
    return f"M-{rng.randint(100000, 999999)}"  # member_no


def _question(fields: dict[str, str], items: list[tuple[str, str]], rng: random.Random, zh: bool):
    """(question, answer, what was asked): a labelled field, or the price of one item."""
    choices = list(fields) + (["item"] if items else [])
    asked = rng.choice(choices)
    if asked == "item":
        name, price = rng.choice(items)
        return (f"{name}多少钱？" if zh else f"How much does the {name.lower()} cost?"), price, f"item:{name}"
    return LABELS[asked][2 + zh], fields[asked], asked


def _render(title, fields, items, colon, rng: random.Random, lang: Language, width: int) -> Image.Image:
    size = max(10, width // 20)
    font, title_font = get_font(lang, size), get_font(lang, size * 3 // 2)
    margin, step = width // 16, size * 3 // 2
    rows = 2 + len(fields) + len(items) + 1
    height = 2 * margin + rows * step + step // 2
    paper = tuple(rng.randint(240, 255) for _ in range(3))
    ink = tuple(rng.randint(10, 60) for _ in range(3))
    image = Image.new("RGB", (width, height), paper)
    draw = ImageDraw.Draw(image)
    draw.text((width // 2, margin), title, font=title_font, fill=ink, anchor="mt")
    y = margin + 2 * step
    for key, value in fields.items():
        if key != "total":
            draw.text((margin, y), f"{LABELS[key][lang == 'zh']}{colon}{value}", font=font, fill=ink)
            y += step
    if items:
        draw.line((margin, y + step // 4, width - margin, y + step // 4), fill=ink, width=1)
        y += step // 2
        for name, price in items:
            draw.text((margin, y), name, font=font, fill=ink)
            draw.text((width - margin, y), price, font=font, fill=ink, anchor="ra")
            y += step
        draw.text((margin, y), f"{LABELS['total'][lang == 'zh']}{colon}{fields['total']}", font=font, fill=ink)
    return image
