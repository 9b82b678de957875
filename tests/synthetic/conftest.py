"""The answers scan questions should get, written out by hand (the scans dataset's and the VQA-RAD suite's)."""

import pytest


def expected_answer(question, lesion, lang):
    """The answer each wording should get, written out by hand."""
    side = lesion and lesion["side"]
    if lang == "zh":
        zh_side = side and {"left": "左", "right": "右"}[side]
        if question.startswith("病灶在") and question.endswith("侧吗？"):
            return "是" if question[3] == zh_side else "不是"
        return {"这张影像中有病灶吗？": "有" if side else "没有", "这张图像有异常吗？": "有" if side else "没有",
                "这张图像正常吗？": "不是" if side else "是", "病灶位于图像的哪一侧？": f"{zh_side}侧",
                "病灶在哪一侧？": f"{zh_side}侧", "病灶位于什么部位？": f"{zh_side}肺"}[question]
    if question.startswith("Is the lesion on the "):
        return "yes" if question == f"Is the lesion on the {side} side?" else "no"
    return {"Is there a lesion in this scan?": "yes" if side else "no",
            "Is there an abnormality in this image?": "yes" if side else "no",
            "Is this image normal?": "no" if side else "yes", "On which side of the image is the lesion?": side,
            "Which side is the lesion on?": side, "Where is the lesion located?": f"{side} lung"}[question]


@pytest.fixture
def scan_answer():
    return expected_answer
