"""DICOM for the medical assistant: read (de-identifying first), group into studies and series, render.

`read_folder` reads every file's header, de-identifies it on the spot, and only then
groups it by (pseudonymised) Study and Series Instance UID; the original dataset never
leaves `read_file`. A file that is not DICOM, is corrupt, cannot be de-identified or is
not an image instance (a DICOMDIR, say) becomes a `Skipped` with a reason code.

`render` turns one frame into an 8-bit image the way a viewer would: the modality LUT
(rescale slope/intercept), the file's window (any one of several centre/width pairs,
with its VOI LUT function) or, without one, a CT preset for the body part or the
0.5-99.5 percentile range, MONOCHROME1 inverted, colour through the palette or as RGB.
The windowing itself is pydicom's (`apply_windowing`), asked for an 8-bit output range.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pydicom.config
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_windowing
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from pydicom.valuerep import DSfloat

from vlstack.apps.deid import Deidentifier
from vlstack.errors import DataError
from vlstack.progress import progress_bar

CT_WINDOWS: dict[str, tuple[str, float, float]] = {
    "HEAD": ("ct-brain", 40, 80),
    "BRAIN": ("ct-brain", 40, 80),
    "CHEST": ("ct-lung", -600, 1500),
    "LUNG": ("ct-lung", -600, 1500),
}
"""CT windows (name, centre, width in HU) by Body Part Examined, for a file without its own window."""
CT_DEFAULT_WINDOW = ("ct-soft-tissue", 40.0, 400.0)
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


class Unusable(DataError):
    """A file or series that cannot be used; `reason` is a short code for counting."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


@dataclass
class Skipped:
    file: str
    """The file's name in the outputs: a pseudonym unless paths are shown (they can name the patient)."""
    reason: str
    """not_dicom | unreadable | deidentification_failed | no_series_uid | duplicate_instance"""
    detail: str


@dataclass
class Instance:
    path: Path
    """In memory only, to read the pixels later; outputs use `file`."""
    file: str
    header: Dataset
    """The de-identified header, without pixel data."""


@dataclass
class Series:
    uid: str
    instances: list[Instance] = field(default_factory=list)

    @property
    def header(self) -> Dataset:
        return self.instances[0].header

    def middle(self) -> Instance:
        """The middle instance in acquisition order (Instance Number, then Slice Location, then file name)."""
        def order(instance: Instance) -> tuple:
            h = instance.header
            number = h.get("InstanceNumber")
            location = h.get("SliceLocation")
            return (number is None, number or 0, location is None, float(location or 0), instance.file)
        return sorted(self.instances, key=order)[len(self.instances) // 2]


@dataclass
class Study:
    uid: str
    patient: str | None
    series: list[Series] = field(default_factory=list)


@dataclass
class Rendering:
    image: Image.Image
    """8-bit grayscale ('L') or RGB."""
    frame: int
    frames: int
    window: tuple[float, float] | None
    """(centre, width) applied after the modality LUT; None for colour images."""
    window_source: str
    """file | file #i (one of several windows) | ct-brain | ct-lung | ct-soft-tissue | percentile | color"""
    photometric: str


def read_folder(folder: str | Path, deidentifier: Deidentifier, show_paths: bool = False
                ) -> tuple[list[Study], list[Skipped]]:
    """Every file under `folder` (recursively, in name order), de-identified and grouped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"study folder {folder} does not exist or is not a directory")
    studies: dict[str, Study] = {}
    series: dict[str, Series] = {}
    seen: set[tuple[str, str]] = set()
    skipped: list[Skipped] = []
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    with progress_bar(transient=True) as progress:
        for path in progress.track(files, description="reading DICOM"):
            relative = str(path.relative_to(folder))
            label = relative if show_paths else f"file-{deidentifier.pseudonym('file:' + relative, 12)}"
            try:
                header, patient = read_file(path, deidentifier, pixels=False)
                study_uid = str(header.get("StudyInstanceUID", ""))
                series_uid = str(header.get("SeriesInstanceUID", ""))
                if not study_uid or not series_uid:
                    raise Unusable("no_series_uid", "no Study/Series Instance UID: not an image instance "
                                                    "(e.g. a DICOMDIR or a fragment)")
                key = (series_uid, str(header.get("SOPInstanceUID", label)))
                if key in seen:
                    raise Unusable("duplicate_instance", "the same SOP Instance UID was read from an earlier file")
            except Unusable as error:
                skipped.append(Skipped(label, error.reason, str(error)))
                continue
            seen.add(key)
            if series_uid not in series:
                series[series_uid] = Series(series_uid)
                studies.setdefault(study_uid, Study(study_uid, patient)).series.append(series[series_uid])
            series[series_uid].instances.append(Instance(path, label, header))
    return list(studies.values()), skipped


def read_file(path: Path, deidentifier: Deidentifier, pixels: bool) -> tuple[Dataset, str | None]:
    """One file, de-identified before it is returned (with the patient pseudonym); raises `Unusable`.

    Parser messages, warnings and value-validation logs are not passed on: they can quote the raw values
    (and the path) this function exists to keep in.
    """
    with warnings.catch_warnings(), pydicom.config.disable_value_validation():
        warnings.simplefilter("ignore")
        try:
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=not pixels)
            except InvalidDicomError:  # no preamble: accept it only if it parses as an instance
                ds = pydicom.dcmread(path, stop_before_pixels=not pixels, force=True)
                if "SOPClassUID" not in ds:
                    raise Unusable("not_dicom", "not a DICOM file (no 'DICM' preamble and no SOP Class UID)") from None
        except Unusable:
            raise
        except Exception as exc:  # pydicom raises many types on corrupt files
            raise Unusable("unreadable", f"the header does not parse ({type(exc).__name__})") from None
        try:
            patient = deidentifier.clean(ds)
        except Exception as exc:  # a value that cannot be parsed cannot be cleaned: never pass it on
            raise Unusable("deidentification_failed", f"an element does not parse ({type(exc).__name__})") from None
    return ds, patient


def render(ds: Dataset, window_index: int = 0) -> Rendering:
    """The middle frame of `ds` (a de-identified dataset with pixel data) as an 8-bit image."""
    if not any(k in ds for k in PIXEL_KEYWORDS):
        raise Unusable("no_pixel_data", "the instance holds no pixel data (e.g. a report, a waveform or RT plan)")
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # missing decoder plugins, truncated data, ...
        raise Unusable("undecodable", f"{type(exc).__name__}: {exc}") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    frame = frames // 2
    if frames > 1:
        pixels = pixels[frame]  # [rows, cols(, samples)]
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        values = apply_modality_lut(pixels, ds).astype(np.float64)
        source, center, width, function = _choose_window(ds, values, window_index)
        display = display_window(values, center, width, function)
        if photometric == "MONOCHROME1":
            display = 255.0 - display
        image = Image.fromarray(display.round().astype(np.uint8), mode="L")
        return Rendering(image, frame, frames, (center, width), source, photometric)
    if photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, ds)
    elif pixels.ndim != 3:
        raise Unusable("unsupported_photometric", f"photometric interpretation {photometric!r} is not supported")
    if pixels.dtype.itemsize > 1:  # e.g. 16-bit palette entries
        pixels = pixels >> (8 * pixels.dtype.itemsize - 8)
    return Rendering(Image.fromarray(pixels.astype(np.uint8), mode="RGB"), frame, frames, None, "color", photometric)


def display_window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """DICOM windowing (PS3.3 C.11.2.1.2) of modality values into [0, 255], by pydicom."""
    voi = Dataset()
    voi.PhotometricInterpretation = "MONOCHROME2"
    voi.BitsStored, voi.PixelRepresentation = 8, 0  # the window's output range: unsigned 8-bit
    voi.WindowCenter = DSfloat(center, auto_format=True)
    voi.WindowWidth = DSfloat(width, auto_format=True)
    voi.VOILUTFunction = function
    try:
        return apply_windowing(values, voi)
    except ValueError as exc:  # a width below 1, an unknown function
        raise Unusable("bad_window", str(exc)) from None


def write_dicom(path: str | Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int | None = None,
                **attributes) -> Path:
    """Write `pixels` ([rows, cols], [frames, rows, cols] or RGB) as a DICOM file with `attributes`
    (keyword=value); for test studies and the demo. CT gets the CT SOP class, anything else secondary capture."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage if attributes.get("Modality") == "CT" else SecondaryCaptureImageStorage
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.set_pixel_data(pixels, photometric, bits_stored or 8 * pixels.dtype.itemsize)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _choose_window(ds: Dataset, values: np.ndarray, index: int) -> tuple[str, float, float, str]:
    """(source, centre, width, VOI LUT function): the file's window, else a CT preset, else percentiles."""
    if "WindowCenter" in ds and "WindowWidth" in ds:
        centers, widths = _as_list(ds.WindowCenter), _as_list(ds.WindowWidth)
        i = min(index, len(centers) - 1, len(widths) - 1)
        source = "file" if len(centers) == 1 else f"file #{i}"
        return source, float(centers[i]), float(widths[i]), str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR")
    if str(ds.get("Modality", "")) == "CT":
        name, center, width = CT_WINDOWS.get(str(ds.get("BodyPartExamined", "")).upper(), CT_DEFAULT_WINDOW)
        return name, center, width, "LINEAR"
    low, high = np.percentile(values, [0.5, 99.5])
    return "percentile", float((low + high) / 2), float(max(high - low, 1.0)), "LINEAR"


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
