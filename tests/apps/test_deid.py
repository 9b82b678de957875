"""De-identification against PS3.15 Table E.1-1: every attribute of the table, pydicom's own test files,
ages however they are written, the file meta, and the burned-in-text risk flag."""

from __future__ import annotations

import copy
import io
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRLittleEndian, UltrasoundImageStorage

from vlstack.apps.deid import (
    MASKED,
    METHOD,
    OPTIONS,
    RETAINED,
    TABLE,
    Deidentifier,
    burned_in_risk,
    capped_age,
    table_action,
)
from vlstack.apps.dicom import write_dicom
from vlstack.apps.medical import MedicalConfig, run_medical

NUMERIC = 4242
BINARY_VRS = ("OB", "OD", "OF", "OL", "OV", "OW", "UN")
NUMBER_VRS = ("US", "SS", "UL", "SL", "FL", "FD", "SV", "UV", "IS", "DS")
NON_TABLE_SEQUENCE = "AnatomicRegionSequence"  # not in the table: kept, its items cleaned


def _sentinel(vr: str, i: int):
    """A value of `vr` that identifies attribute number `i` and can be searched for in the output bytes."""
    if vr == "PN":
        return f"Secret^Name{i:04d}"
    if vr == "UI":
        return f"1.2.999.{i}"
    if vr == "DA":
        return "19290102"
    if vr == "TM":
        return "101112"
    if vr == "DT":
        return "19290102101112"
    if vr == "AS":
        return "095Y"
    if vr == "AT":
        return 0x00100010
    if vr in NUMBER_VRS:
        return str(NUMERIC) if vr in ("IS", "DS") else NUMERIC
    if vr in BINARY_VRS:
        return f"SECRETBYTES{i:04d}".encode()
    return f"SECRET{i:04d}"


def _table_dataset() -> tuple[Dataset, dict[str, str], int]:
    """A dataset holding every attribute of the table that pydicom's dictionary knows, each with an
    identifying value; returns it, the searchable sentinels by keyword, and the number skipped."""
    ds, sentinels, unknown = Dataset(), {}, 0
    for i, tag in enumerate(sorted(TABLE)):
        if tag.group in (0x0000, 0x0002):  # command set and file meta: never in a dataset (file meta: below)
            continue
        try:
            vr = dictionary_VR(tag).split(" or ")[0]
        except KeyError:  # newer than this pydicom's dictionary
            unknown += 1
            continue
        if vr == "SQ":
            item = Dataset()
            item.PatientName = f"Secret^Item{i:04d}"
            item.ReferencedSOPInstanceUID = f"1.2.998.{i}"
            ds.add_new(tag, vr, Sequence([item]))
            sentinels[keyword_for_tag(tag)] = f"Secret^Item{i:04d}"
            continue
        value = _sentinel(vr, i)
        ds.add_new(tag, vr, value)
        if vr not in (*NUMBER_VRS, "AT") and tag not in RETAINED:  # numbers are checked by value
            sentinels[keyword_for_tag(tag)] = value
    for group, element, _, _, _ in MASKED:  # curves and overlays: group 50xx, 60xx
        ds.add_new(Tag(group + 2, element or 0x0010), "OB", b"SECRETOVERLAY1")
    return ds, sentinels, unknown


def _as_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=False, little_endian=True)
    return buffer.getvalue()


def _walk(ds: Dataset):
    for element in ds:
        yield element
        if element.VR == "SQ":
            for item in element.value:
                yield from _walk(item)


def test_every_table_attribute_leaves_no_identifying_value(capsys):
    ds, sentinels, unknown = _table_dataset()
    item = Dataset()
    for element in list(ds):
        item.add(copy.deepcopy(element))  # the whole table again, one level down, in a sequence the table keeps
    setattr(ds, NON_TABLE_SEQUENCE, Sequence([item]))
    covered = len(ds) - 1 - len(MASKED)
    Deidentifier(b"key").clean(ds)

    written = _as_bytes(ds)
    survivors = sorted(k for k, v in sentinels.items() if (v if isinstance(v, bytes) else v.encode()) in written)
    assert survivors == []
    for element in _walk(ds):  # numbers: emptied, removed or a dummy 0 unless the profile keeps them
        if table_action(element.tag) and element.tag not in RETAINED and element.VR in NUMBER_VRS:
            assert element.value in (None, "", 0, "0"), element
    assert b"Secret^Item" not in written and b"1.2.998." not in written and b"SECRETOVERLAY" not in written
    assert ds.PatientAge == "090Y" and NON_TABLE_SEQUENCE in ds
    assert covered >= 600  # of the table's exact entries: those pydicom's dictionary knows, outside groups 0 and 2
    with capsys.disabled():
        print(f"\nTable E.1-1: {covered} attributes covered (at two depths), {unknown} unknown to pydicom, "
              f"{len(MASKED)} masked groups; identifying values left: {len(survivors)}")


def _shipped_files() -> list[Path]:
    paths = (Path(p) for p in pydicom.data.get_testdata_files() if not p.endswith((".txt", ".json")))
    return sorted(p for p in paths if p.is_file())


def _identifying_values(ds: Dataset) -> set[str]:
    """Every value of `ds` (its file meta and sequences included) that the profile removes or replaces:
    table attributes not retained, person names, UIDs that are not registered, private elements, the
    file meta's AE titles and private information. Text values of four characters or more."""
    found = set()
    datasets = [ds, *([ds.file_meta] if getattr(ds, "file_meta", None) is not None else [])]
    for element in (e for d in datasets for e in _walk(d)):
        action = table_action(element.tag)
        identifying = (
            (action is not None and element.tag not in RETAINED) or element.VR == "PN" or element.tag.is_private
            or (element.VR == "UI" and element.value and not UID(str(element.value)).keyword
                and element.keyword != "ImplementationClassUID")  # names the writing software, not a person
            or (element.tag.group == 2 and element.keyword in ("SourceApplicationEntityTitle",
                                                               "SendingApplicationEntityTitle", "PrivateInformation"))
        )
        searchable = element.VR not in ("SQ", *BINARY_VRS, *NUMBER_VRS, "AT")  # numbers recur everywhere
        if identifying and searchable and element.value not in (None, ""):
            values = element.value if isinstance(element.value, (list, pydicom.multival.MultiValue)) else [element.value]
            found |= {str(v).strip() for v in values if len(str(v).strip()) >= 4}
    return found


def _searchable_identifiers(ds: Dataset) -> set[str]:
    """The identifying values of `ds` that can be searched for in an output: those that are not part of
    a value the profile keeps (InstitutionName 'TOSHIBA' is inside Manufacturer 'TOSHIBA_MEC';
    an InstanceCreatorUID can be the writing software's ImplementationClassUID)."""
    meta = getattr(ds, "file_meta", None) or Dataset()
    kept = [str(e.value) for e in _walk(ds) if table_action(e.tag) is None
            and e.VR not in ("PN", "UI", "SQ", *BINARY_VRS) and not e.tag.is_private]
    kept += [str(meta.get(k, "")) for k in ("ImplementationClassUID", "ImplementationVersionName")]  # the writer
    return {v for v in _identifying_values(ds) if not any(v in k for k in kept)}


def test_pydicoms_test_files_keep_no_identifying_value(capsys):
    files = scanned = leaks = 0
    for path in _shipped_files():
        with warnings.catch_warnings(), pydicom.config.disable_value_validation():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(path, force=True)
                identifying = _searchable_identifiers(ds)
            except Exception:  # deliberately broken files: the DICOM reader skips them (test_medical)
                continue
            files += 1
            Deidentifier(b"key").clean(ds)
            assert "TimezoneOffsetFromUTC" not in ds
            assert all(k not in ds.file_meta for k in ("SourceApplicationEntityTitle", "PrivateInformation")) \
                if getattr(ds, "file_meta", None) is not None else True
            try:
                written = _as_bytes(ds)
            except Exception:  # a value this pydicom cannot write back: search the values instead
                written = repr(list(_walk(ds))).encode()
        left = sorted(v for v in identifying if v.encode() in written)
        assert left == [], (path.name, left)
        scanned += len(identifying)
        leaks += len(left)
    assert files >= 70
    with capsys.disabled():
        print(f"\npydicom test files: {files} de-identified, {scanned} identifying values, {leaks} left")


@pytest.mark.parametrize(("written", "expected"), [
    ("095Y", "090Y"), ("95Y", "090Y"), ("95", "090Y"), ("095 Y", "090Y"), ("95y", "090Y"), ("1200M", "090Y"),
    ("4800W", "090Y"), ("089Y", "089Y"), ("45", "045Y"), ("003M", "003M"), ("12 D", "012D"),
    ("1000D", "002Y"), ("old", None), ("", None),
])
def test_ages_over_89_are_capped_whatever_their_spelling(written, expected):
    assert capped_age(written) == expected


def test_an_age_that_cannot_be_read_is_removed():
    ds = Dataset()
    ds.PatientAge = "ninety-five"
    Deidentifier(b"key").clean(ds)
    assert "PatientAge" not in ds


def test_file_meta_keeps_only_what_reading_needs():
    ds = Dataset()
    ds.SOPInstanceUID = "1.2.999.1"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.999.1"
    ds.file_meta.SourceApplicationEntityTitle = "HOSPITAL_PACS"
    ds.file_meta.SendingApplicationEntityTitle = "WARD7_SEND"
    ds.file_meta.PrivateInformationCreatorUID = "1.2.999.2"
    ds.file_meta.PrivateInformation = b"patient John Doe"
    ds.EncapsulatedDocument = b"%PDF-1.4 report of John Doe"
    Deidentifier(b"key").clean(ds)
    assert sorted(e.keyword for e in ds.file_meta) == ["MediaStorageSOPInstanceUID", "TransferSyntaxUID"]
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID != "1.2.999.1"
    assert "EncapsulatedDocument" not in ds and b"John Doe" not in _as_bytes(ds)


@pytest.mark.parametrize(("attributes", "risky"), [
    ({"Modality": "US"}, True),  # ultrasound: the banner shows the patient's name, not flagged by the file
    ({"Modality": "CT"}, False),
    ({"Modality": "CT", "BurnedInAnnotation": "YES"}, True),
    ({"Modality": "US", "BurnedInAnnotation": "NO"}, False),  # the producer says there is none
    ({"Modality": "CR", "ImageType": ["DERIVED", "SECONDARY"]}, True),
    ({"Modality": "OT", "ConversionType": "SD"}, True),  # a scanned document
    ({"Modality": "MR", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"}, True),  # secondary capture
])
def test_burned_in_text_risk_by_modality_and_image_type(attributes, risky):
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    assert (burned_in_risk(ds) is not None) == risky


def test_an_ultrasound_series_is_flagged_and_can_be_refused(tmp_path, engine):
    pixels = np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)
    write_dicom(tmp_path / "study" / "us.dcm", pixels, Modality="US", SOPClassUID=UltrasoundImageStorage)
    write_dicom(tmp_path / "study" / "ct.dcm", pixels.astype(np.int16), Modality="CT", BodyPartExamined="HEAD")
    report = run_medical(tmp_path / "study", engine, tmp_path / "out", MedicalConfig(max_new_tokens=2), key=b"k")
    by_modality = {s["modality"]: s for study in report["studies"] for s in study["series"]}
    assert "modality US" in by_modality["US"]["warnings"][0] and by_modality["CT"]["warnings"] == []
    assert by_modality["US"]["status"] == "answered"  # flagged, but reported by default
    refused = run_medical(tmp_path / "study", engine, tmp_path / "refused",
                          MedicalConfig(max_new_tokens=2, refuse_burned_in=True), key=b"k")
    by_modality = {s["modality"]: s for study in refused["studies"] for s in study["series"]}
    assert by_modality["US"]["status"] == "refused_burned_in" and "thumbnail" not in by_modality["US"]
    assert by_modality["CT"]["status"] == "answered"
    thumbnails = [p.relative_to(tmp_path / "refused").as_posix() for p in (tmp_path / "refused" / "thumbnails").iterdir()]
    assert thumbnails == [by_modality["CT"]["thumbnail"]]


def test_the_medical_report_on_every_shipped_file_names_no_identifier(tmp_path, engine):
    """The whole assistant over pydicom's test files: report.json and report.html hold no identifying
    value of any input as a whole word (beside the words the report writes of its own: the method), and
    the thumbnails carry no metadata at all."""
    study = tmp_path / "study"
    study.mkdir()
    identifying: set[str] = set()
    for i, path in enumerate(_shipped_files()):
        shutil.copy(path, study / f"{i:03d}.dcm")
        with warnings.catch_warnings(), pydicom.config.disable_value_validation():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
                identifying |= _searchable_identifiers(ds)
            except Exception:
                continue
    report = run_medical(study, engine, tmp_path / "out", MedicalConfig(max_new_tokens=1, thumbnail_size=32), key=b"k")
    out = tmp_path / "out"
    text = (out / "report.json").read_text() + (out / "report.html").read_text()
    own_words = set(re.findall(r"\w+", f"{METHOD} {OPTIONS}"))
    left = [v for v in identifying - own_words if re.search(rf"(?<!\w){re.escape(v)}(?!\w)", text)]
    assert report["counts"]["rendered"] >= 20 and sorted(left) == []
    for png in (out / "thumbnails").iterdir():
        with Image.open(png) as image:
            assert image.text == {} and "exif" not in image.info
