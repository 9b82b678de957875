"""De-identification of DICOM datasets: a subset of the DICOM PS3.15 Annex E basic profile.

What is done, to every element at every depth (sequences included):
- person names (every PN value), dates and times (every DA, DT, TM value) are emptied;
- the attributes in `REMOVE` (identifiers, addresses, institutions, physicians, stations, free-text
  comments and descriptions, SR content) are deleted, and so are private elements, overlays (60xx),
  curves (50xx) and elements of unknown VR (UN: their bytes could hold anything);
- the attributes in `EMPTY` (patient ID, accession number, study ID, ...) are kept with an empty value;
- every UID that is not a registered DICOM UID (SOP classes and transfer syntaxes stay) is replaced by
  `2.25.<keyed hash>`, so the same UID always maps to the same new one under one key and studies and
  series still group, while the original cannot be recovered without the key;
- patient sex, age (over 89 becomes "090Y", the HIPAA limit), size and weight are kept: the profile's
  Retain Patient Characteristics option, because they matter to a reading.

Not done: pixel data is not inspected. A dataset that says `BurnedInAnnotation = YES` may show
identifiers in its pixels; `burned_in_warning` says so for the report.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID

METHOD = "vlstack: PS3.15 E.1 basic profile subset, keyed UID remap"
"""The De-identification Method written into each dataset (a LO value: 64 characters at most)."""
OPTIONS = "retain patient characteristics (sex, age capped at 90Y, size, weight); pixels not cleaned"
REMOVE_KEYWORDS = (
    "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames", "PatientBirthName", "PatientBirthTime",
    "PatientAddress", "PatientTelephoneNumbers", "PatientTelecomInformation", "PatientMotherBirthName",
    "MilitaryRank", "BranchOfService", "MedicalRecordLocator", "Occupation", "AdditionalPatientHistory",
    "PatientComments", "EthnicGroup", "PatientReligiousPreference", "CountryOfResidence", "RegionOfResidence",
    "ResponsiblePerson", "ResponsibleOrganization", "PatientInsurancePlanCodeSequence", "IssuerOfPatientID",
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "InstitutionCodeSequence",
    "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers", "ReferringPhysicianIdentificationSequence",
    "PhysiciansOfRecord", "PhysiciansOfRecordIdentificationSequence", "PerformingPhysicianName",
    "PerformingPhysicianIdentificationSequence", "NameOfPhysiciansReadingStudy", "RequestingPhysician",
    "ScheduledPerformingPhysicianName", "OperatorsName", "OperatorIdentificationSequence", "StationName",
    "DeviceSerialNumber", "PlateID", "DetectorID", "ImageComments", "StudyComments", "StudyDescription",
    "SeriesDescription", "ProtocolName", "RequestAttributesSequence", "RequestedProcedureDescription",
    "RequestedProcedureID", "ReasonForStudy", "PerformedProcedureStepID", "PerformedProcedureStepDescription",
    "ScheduledProcedureStepID", "AdmissionID", "CurrentPatientLocation", "AcquisitionComments",
    "DerivationDescription", "ImagePresentationComments", "InterpretationText", "ContentCreatorName",
    "ContentSequence", "TextValue",
)
EMPTY_KEYWORDS = ("PatientID", "AccessionNumber", "StudyID")
"""Type 2 attributes: kept, with an empty value (the profile's Z action)."""
REMOVE = frozenset(tag_for_keyword(k) for k in REMOVE_KEYWORDS)
EMPTY = frozenset(tag_for_keyword(k) for k in EMPTY_KEYWORDS)
_AGE = re.compile(r"^(\d{3})Y$")
KEY_ENV = "VLSTACK_DEID_KEY"
"""Environment variable with the pseudonymisation key; without it, each run draws a random key."""


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
        if getattr(ds, "file_meta", None) is not None:
            self._clean(ds.file_meta)
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = METHOD
        return f"patient-{self.pseudonym('patient:' + patient, 10)}" if patient else None

    def _clean(self, ds: Dataset) -> None:
        for element in list(ds):
            tag = element.tag
            if tag in REMOVE or tag.group & 0xFF00 in (0x5000, 0x6000) or tag.is_private or element.VR == "UN":
                del ds[tag]
            elif element.VR == "SQ":
                for item in element.value:
                    self._clean(item)
            elif tag in EMPTY or element.VR in ("PN", "DA", "DT", "TM"):
                element.value = None
            elif element.VR == "UI" and element.value:
                element.value = self._uid_value(element.value)
            elif element.keyword == "PatientAge" and element.value:
                match = _AGE.match(str(element.value))
                if match and int(match.group(1)) > 89:
                    element.value = "090Y"

    def _uid_value(self, value: str | MultiValue) -> str | list[str]:
        if isinstance(value, MultiValue):
            return [self._uid_value(v) for v in value]
        return value if UID(value).keyword else self.uid(str(value))  # a registered UID has a keyword


def burned_in_warning(ds: Dataset) -> str | None:
    """A warning when the pixels themselves may show identifiers (this module does not clean pixels)."""
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        return "BurnedInAnnotation is YES: the pixels may show identifiers, which de-identification does not remove"
    return None
