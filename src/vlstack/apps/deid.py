"""De-identification of DICOM datasets: PS3.15 Annex E, the Basic Application Level Confidentiality Profile.

Table E.1-1 names every attribute that can identify a patient and its action. The table itself comes
from `dicom-anonymizer`, which tracks the standard (`TABLE_EDITION`); this module applies it, to every
element at every depth (sequence items included) and to the file meta:
- X: removed; Z: kept with an empty value; D: a dummy value of its VR; U: the UID is replaced by
  `2.25.<keyed hash>`, so the same UID always maps to the same new one under one key (studies and
  series still group) and the original cannot be recovered without the key;
- where the table allows several (X/Z, X/D, Z/D, X/Z/D) the one that keeps the attribute present is
  used (Z, else D): a reader that requires it still finds it, holding nothing; X/Z/U* sequences keep
  their items, cleaned the same way, with their UIDs replaced;
- binary values (encapsulated documents, certificates, ...) that the table does not keep are removed.

What the table does not name is kept (action K), except what can carry identifiers whatever its tag:
person names (PN) and dates and times (DA, DT, TM) are emptied, free text (LT, ST, UT) and values of
unknown VR (UN) removed, private elements, overlays (60xx) and curves (50xx) removed, and every UID that
is not a registered DICOM UID (SOP classes and transfer syntaxes stay) replaced as above. The file meta
keeps only what is needed to read the file (`FILE_META_KEPT`): Source/Sending/Receiving AE titles and
Private Information go.

Option applied: Retain Patient Characteristics (sex, size, weight and age, which matter to a reading); an
age over 89, whatever its spelling (`095Y`, `95Y`, `95`, `095 Y`, in months, weeks or days), becomes
`090Y` (HIPAA's limit), and an age that cannot be read is removed.

Pixels are not cleaned: `burned_in_risk` names the datasets whose pixels may show identifiers.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Iterator

from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

TABLE_EDITION = "dicomfields_2026c"
"""The edition of Table E.1-1 applied (a module of dicom-anonymizer)."""
METHOD = "vlstack: PS3.15 E.1-1 basic profile (2026c), keyed UID remap"
"""The De-identification Method written into each dataset (a LO value: 64 characters at most)."""
OPTIONS = "retain patient characteristics (sex, age capped at 090Y, size, weight); pixels not cleaned"
_CHOSEN = {"D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "U", "Z_D_TAGS": "Z", "X_Z_TAGS": "Z",
           "X_D_TAGS": "D", "X_Z_D_TAGS": "Z", "X_Z_U_STAR_TAGS": "U"}
"""The action applied for each of the table's codes (see the module docstring for the choice)."""
RETAINED = frozenset(tag_for_keyword(k) for k in ("PatientSex", "PatientAge", "PatientSize", "PatientWeight"))
"""Retain Patient Characteristics Option: kept although the table removes or empties them."""
FILE_META_KEPT = frozenset(tag_for_keyword(k) for k in (
    "FileMetaInformationGroupLength", "FileMetaInformationVersion", "MediaStorageSOPClassUID",
    "MediaStorageSOPInstanceUID", "TransferSyntaxUID", "ImplementationClassUID", "ImplementationVersionName"))
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
FREE_TEXT_VRS = frozenset({"LT", "ST", "UT"})
DUMMIES = {"PN": "ANONYMOUS", "DA": "19000101", "TM": "000000", "DT": "19000101000000", "AS": "000Y",
           "IS": "0", "DS": "0", "AE": "ANONYMOUS", "CS": "ANONYMIZED"}
"""Action D's value by VR; other text VRs get "ANONYMIZED", numbers 0, sequences no items."""
KEY_ENV = "VLSTACK_DEID_KEY"
"""Environment variable with the pseudonymisation key; without it, each run draws a random key."""
_AGE = re.compile(r"^0*(\d+)\s*([DWMY]?)$", re.IGNORECASE)
_DAYS_PER_UNIT = {"D": 1.0, "W": 7.0, "M": 365.25 / 12, "Y": 365.25}


def _table() -> tuple[dict[BaseTag, str], list[tuple[int, int, int, int, str]]]:
    """Table E.1-1 as {tag: action} plus the masked entries (curves 50xx, overlays 60xx) as
    (group, element, group mask, element mask, action)."""
    exact: dict[BaseTag, str] = {}
    masked: list[tuple[int, int, int, int, str]] = []
    for category, entries in dicom_anonymization_database_selector(TABLE_EDITION).items():
        if category == "ALL_TAGS":
            continue
        for entry in entries:
            if len(entry) == 4:
                masked.append((*entry, _CHOSEN[category]))
            else:
                exact[Tag(*entry)] = _CHOSEN[category]
    return exact, masked


TABLE, MASKED = _table()


def table_action(tag: BaseTag) -> str | None:
    """The action this module applies for `tag` by Table E.1-1 (X, Z, D or U), or None if it is not in it."""
    if tag in TABLE:
        return TABLE[tag]
    for group, element, group_mask, element_mask, action in MASKED:
        if tag.group & group_mask == group and tag.element & element_mask == element:
            return action
    return None


class Deidentifier:
    """Cleans datasets in place; one instance maps each UID (and each patient) to one pseudonym."""

    def __init__(self, key: bytes | None = None):
        env = os.environ.get(KEY_ENV)
        self.key_source = "argument" if key else f"${KEY_ENV}" if env else "random per run"
        self._key = key or (env.encode() if env else os.urandom(32))

    def pseudonym(self, value: str, digits: int = 16) -> str:
        """A keyed hash of `value` in hex: stable under one key, not reversible without it."""
        return hmac.new(self._key, value.encode(), hashlib.sha256).hexdigest()[:digits]

    def uid(self, value: str) -> str:
        """The replacement of a UID: `2.25.` and a 128-bit keyed hash (44 characters at most)."""
        digest = hmac.new(self._key, f"uid:{value}".encode(), hashlib.sha256).digest()
        return f"2.25.{int.from_bytes(digest[:16], 'big')}"

    def clean(self, ds: Dataset) -> str | None:
        """Clean `ds` and its file meta in place; returns the patient's pseudonym (taken from the patient ID
        before it is emptied; None without one), so studies of one patient can still be linked."""
        patient = str(ds.get("PatientID", "") or "")
        self._clean(ds)
        meta = getattr(ds, "file_meta", None)
        if meta is not None:
            for tag in [t for t in meta.keys() if t not in FILE_META_KEPT]:
                del meta[tag]
            if meta.get("MediaStorageSOPInstanceUID"):
                meta.MediaStorageSOPInstanceUID = self._uid_value(meta.MediaStorageSOPInstanceUID)
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = METHOD
        return f"patient-{self.pseudonym('patient:' + patient, 10)}" if patient else None

    def _clean(self, ds: Dataset) -> None:
        for element in list(ds):
            tag = element.tag
            action = "K" if tag in RETAINED else table_action(tag)
            if tag.is_private or tag.group & 0xFF00 in (0x5000, 0x6000) or action == "X":
                del ds[tag]
            elif element.VR == "UN" or (element.VR in BINARY_VRS and action in ("Z", "D")):
                del ds[tag]  # values of unknown VR; encapsulated documents, certificates
            elif element.VR == "SQ":
                self._clean_sequence(element, action)
            elif action == "Z" or (action is None and element.VR in ("PN", "DA", "DT", "TM")):
                element.value = None
            elif action == "D" and element.VR != "UI":  # a UID's dummy is its keyed replacement
                element.value = _dummy(element)
            elif action is None and element.VR in FREE_TEXT_VRS:
                del ds[tag]
            elif element.VR == "UI" and element.value:  # action U, or any UID that is not registered
                element.value = self._uid_value(element.value)
            elif tag == _PATIENT_AGE and element.value:
                age = capped_age(str(element.value))
                if age is None:
                    del ds[tag]
                else:
                    element.value = age

    def _clean_sequence(self, element: DataElement, action: str | None) -> None:
        """Z and D leave a sequence without items; U (X/Z/U*) and K clean every item."""
        if action in ("Z", "D"):
            element.value = Sequence()
            return
        for item in element.value:
            self._clean(item)

    def _uid_value(self, value: str | MultiValue) -> str | list[str]:
        if isinstance(value, MultiValue):
            return [self._uid_value(v) for v in value]
        return value if UID(value).keyword else self.uid(str(value))  # a registered UID has a keyword


_PATIENT_AGE = tag_for_keyword("PatientAge")


def capped_age(value: str) -> str | None:
    """`value` as a conformant Age String, `090Y` if it is over 89 years; None if it cannot be read."""
    match = _AGE.match(value.strip())
    if match is None:
        return None
    number, unit = int(match.group(1)), (match.group(2) or "Y").upper()
    years = number * _DAYS_PER_UNIT[unit] / 365.25
    if years >= 90:
        return "090Y"
    if number > 999:  # too many digits for an Age String: in years instead
        return f"{int(years):03d}Y"
    return f"{number:03d}{unit}"


def _dummy(element: DataElement):
    if element.VR in DUMMIES:
        return DUMMIES[element.VR]
    if element.VR in ("FL", "FD", "SL", "SS", "SV", "UL", "US", "UV"):
        return 0
    return "ANONYMIZED"


BURNED_IN_MODALITIES = frozenset({"US", "IVUS", "XC", "ES", "GM", "SM", "OT", "DOC", "SC"})
"""Modalities whose images often carry text in the pixels: ultrasound (patient name in the banner),
photography, endoscopy, microscopy (slide labels), other, documents, secondary captures."""
SECONDARY_CAPTURE_CLASSES = ("1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.104")
"""SOP Class UID prefixes of secondary captures (screenshots, scans) and encapsulated documents."""


def burned_in_risk(ds: Dataset) -> str | None:
    """Why the pixels of `ds` may show identifiers (which de-identification does not remove), or None.

    Risk: the file says `BurnedInAnnotation = YES`; or, unless it says `NO`, its modality, SOP class, image
    type (SECONDARY) or conversion type (a scan, a digitised film or video, a screenshot) is one whose
    images often carry burned-in text."""
    flag = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if flag == "YES":
        return "BurnedInAnnotation is YES: the pixels may show identifiers"
    if flag == "NO":
        return None
    reasons = list(_risky_types(ds))
    if not reasons:
        return None
    return f"{', '.join(reasons)}: such images often show identifiers in their pixels (BurnedInAnnotation not given)"


def _risky_types(ds: Dataset) -> Iterator[str]:
    modality = str(ds.get("Modality", "") or "").upper()
    if modality in BURNED_IN_MODALITIES:
        yield f"modality {modality}"
    if str(ds.get("SOPClassUID", "")).startswith(SECONDARY_CAPTURE_CLASSES):
        yield "a secondary capture or document"
    image_type = ds.get("ImageType")
    values = list(image_type) if isinstance(image_type, (list, MultiValue)) else [image_type or ""]
    if "SECONDARY" in (str(v).upper() for v in values):
        yield "image type SECONDARY"
    if ds.get("ConversionType"):
        yield f"conversion type {ds.ConversionType}"
