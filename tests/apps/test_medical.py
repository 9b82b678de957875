import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import UID

from vlstack.apps.deid import METHOD, Deidentifier
from vlstack.apps.dicom import read_folder, render, write_dicom
from vlstack.apps.medical import MedicalConfig, run_medical
from vlstack.cli import main
from vlstack.errors import CheckpointError, DataError
from vlstack.synthetic.scans import scan

PHI = {
    "PatientName": "Zhangsecret^Weihidden", "PatientID": "PID-99887766", "PatientBirthDate": "19290102",
    "PatientAddress": "42 Elmstreet Springfield", "InstitutionName": "Saint Example Hospital",
    "ReferringPhysicianName": "Referrer^Doctorname", "OtherPatientIDs": "OTHER-ID-123", "AccessionNumber": "ACC-5566",
    "StationName": "STATION-XYZ", "StudyDescription": "Private study note",
}
STUDY_UID, SERIES_UID = "1.2.826.0.1.3680043.10.511.77.1", "1.2.826.0.1.3680043.10.511.77.1.2"
SHIPPED = Path(get_testdata_file("CT_small.dcm")).parent


def _ct_series(folder: Path, instances: int = 3) -> None:
    """A CT series full of identifiers: top level, in a nested sequence, and in a private element."""
    observer = Dataset()
    observer.VerifyingObserverName = "Observer^Nestedsecret"
    for n in range(instances):
        pixels = (np.arange(16 * 16, dtype=np.int16).reshape(16, 16) * 4 + 100 * n)
        path = write_dicom(folder / f"slice{n}.dcm", pixels, Modality="CT", BodyPartExamined="CHEST",
                           PatientSex="F", PatientAge="095Y", StudyInstanceUID=STUDY_UID, SeriesInstanceUID=SERIES_UID,
                           SOPInstanceUID=f"{SERIES_UID}.{n + 1}", InstanceNumber=n + 1, RescaleSlope=1,
                           RescaleIntercept=-1024, VerifyingObserverSequence=[observer], **PHI)
        ds = pydicom.dcmread(path)
        ds.private_block(0x0011, "ACME 1.1", create=True).add_new(0x01, "LO", "PRIVATE-SECRET-77")
        ds.save_as(path)


def test_phi_is_absent_from_every_output_while_clinical_content_survives(tmp_path, engine, caplog, capsys):
    study = tmp_path / "Zhangsecret_PID-99887766"  # folder names often carry identifiers too
    _ct_series(study / "series1")
    shutil.copy(SHIPPED / "CT_small.dcm", study / "CompressedSamples_CT1.dcm")
    (study / "notes.txt").write_text("not DICOM", encoding="utf-8")
    caplog.set_level(logging.DEBUG)
    report = run_medical(study, engine, tmp_path / "out", MedicalConfig(max_new_tokens=4), key=b"test-key")

    outputs = b"".join(p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file())
    captured = capsys.readouterr()
    outputs += (caplog.text + captured.out + captured.err).encode()
    identifiers = [*PHI.values(), "Zhangsecret", "Weihidden", "Observer^Nestedsecret", "Nestedsecret",
                   "PRIVATE-SECRET-77", STUDY_UID, SERIES_UID, "CompressedSamples", "1CT1", "ABCD1234",
                   "JFK IMAGING CENTER", "CT01_OC0", "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"]
    assert [value for value in identifiers if value.encode() in outputs] == []

    assert report["status"] == "complete"
    assert report["counts"] == {"files_read": 4, "files_skipped": 1, "studies": 2, "series": 2, "rendered": 2,
                                "answered": 2}
    assert report["skipped"][0]["reason"] == "not_dicom" and report["skipped"][0]["file"].startswith("file-")
    ours = next(s for study in report["studies"] for s in study["series"] if s["body_part"] == "CHEST")
    assert (ours["modality"], ours["patient_sex"], ours["patient_age"], ours["instances"]) == ("CT", "F", "090Y", 3)
    assert ours["rendered"]["window_source"] == "ct-lung" and ours["status"] == "answered"
    assert UID(ours["series"]).is_valid and ours["series"].startswith("2.25.")
    thumbnail = Image.open(tmp_path / "out" / ours["thumbnail"])
    assert thumbnail.info == {} and not getattr(thumbnail, "text", {})  # no metadata chunks at all
    assert np.asarray(thumbnail).std() > 10  # the pixels were rendered, not blanked
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert ours["thumbnail"] in page and METHOD in page and "not a diagnosis" in page


def test_deidentification_keeps_clinical_fields_and_remaps_uids_consistently(tmp_path):
    _ct_series(tmp_path, instances=1)
    raw = pydicom.dcmread(tmp_path / "slice0.dcm")
    first, second, other = (pydicom.dcmread(tmp_path / "slice0.dcm") for _ in range(3))
    patient = Deidentifier(b"key").clean(first)
    assert Deidentifier(b"key").clean(second) == patient and patient.startswith("patient-")
    Deidentifier(b"another key").clean(other)
    assert first.StudyInstanceUID == second.StudyInstanceUID != other.StudyInstanceUID
    for ds in (first, other):
        assert ds.SOPClassUID == raw.SOPClassUID  # a registered UID names a kind of object, not a person
        assert UID(ds.SeriesInstanceUID).is_valid and len(ds.SeriesInstanceUID) <= 64
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID != raw.SOPInstanceUID
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName", "StationName"):
        assert keyword in first and not first[keyword].value  # Z (or X/Z/D): kept, empty
    for keyword in ("PatientAddress", "OtherPatientIDs", "StudyDescription"):
        assert keyword not in first  # X
    assert len(first.VerifyingObserverSequence) == 0  # D on a sequence: no items left
    assert not any(element.tag.is_private for element in first)
    assert (first.Modality, first.BodyPartExamined, first.PatientSex, first.PatientAge) == ("CT", "CHEST", "F", "090Y")
    assert first.PatientIdentityRemoved == "YES" and len(first.DeidentificationMethod) <= 64
    assert np.array_equal(first.pixel_array, raw.pixel_array)


@pytest.mark.parametrize("window_index, expected", [
    (0, [0, 102, 128, 230, 255]),  # centre 40, width 400 on HU = 2 * stored - 1000, by the PS3.3 C.11.2.1.2 formula
    (1, [0, 60, 66, 94, 230]),  # the second of two windows: centre 400, width 1500
])
def test_windowing_matches_hand_computed_pixels(tmp_path, window_index, expected):
    stored = np.array([[0, 500, 520, 600, 1000]], dtype=np.int16)  # HU -1000, 0, 40, 200, 1000
    path = write_dicom(tmp_path / "ct.dcm", stored, Modality="CT", RescaleSlope=2, RescaleIntercept=-1000,
                       WindowCenter=[40, 400], WindowWidth=[400, 1500])
    rendering = render(pydicom.dcmread(path), window_index)
    assert np.asarray(rendering.image).tolist() == [expected]
    assert rendering.window == ([(40.0, 400.0), (400.0, 1500.0)][window_index])
    assert rendering.window_source == f"file #{window_index}"


def test_monochrome1_is_inverted(tmp_path):
    stored = np.array([[0, 1024, 2048, 4095]], dtype=np.uint16)
    path = write_dicom(tmp_path / "cr.dcm", stored, "MONOCHROME1", 12, Modality="CR", WindowCenter=2048,
                       WindowWidth=4096)
    # window 2048/4096 gives 0, 63.77, 127.53, 255; MONOCHROME1 shows low values bright
    assert np.asarray(render(pydicom.dcmread(path)).image).tolist() == [[255, 191, 127, 0]]


def test_multi_frame_and_multi_instance_series_show_their_middle_slice(tmp_path):
    frames = np.stack([np.full((4, 4), v, np.uint8) for v in (10, 20, 30)])
    path = write_dicom(tmp_path / "multi.dcm", frames, Modality="OT", WindowCenter=128, WindowWidth=256)
    rendering = render(pydicom.dcmread(path))  # window 128/256 maps x to x
    assert (rendering.frame, rendering.frames, np.unique(np.asarray(rendering.image)).tolist()) == (1, 3, [20])

    series = tmp_path / "series"
    for name, number in zip("ecadb", (5, 3, 1, 4, 2)):  # file names out of acquisition order
        write_dicom(series / f"{name}.dcm", np.full((4, 4), 10 * number, np.uint8), Modality="OT",
                    StudyInstanceUID="1.2.3.4", SeriesInstanceUID="1.2.3.4.5", InstanceNumber=number,
                    WindowCenter=128, WindowWidth=256)
    studies, skipped = read_folder(series, Deidentifier(b"k"), show_paths=True)
    [[only]] = [study.series for study in studies]
    assert skipped == [] and only.middle().file == "c.dcm"


def test_windows_without_a_file_window_follow_the_modality(tmp_path):
    hu = np.array([[-1000, 0, 40, 80, 3000]], dtype=np.int16)
    head = write_dicom(tmp_path / "head.dcm", hu + 1024, Modality="CT", BodyPartExamined="HEAD", RescaleSlope=1,
                       RescaleIntercept=-1024)
    rendering = render(pydicom.dcmread(head))
    assert (rendering.window_source, rendering.window) == ("ct-brain", (40.0, 80.0))
    mr = render(pydicom.dcmread(SHIPPED / "CT_small.dcm"))
    assert mr.window_source == "ct-soft-tissue"
    photo = write_dicom(tmp_path / "mr.dcm", np.arange(100, dtype=np.uint16).reshape(10, 10), Modality="MR")
    assert render(pydicom.dcmread(photo)).window_source == "percentile"


def test_a_synthetic_scan_survives_the_dicom_round_trip_exactly(tmp_path):
    item = scan(0, 0)
    path = write_dicom(tmp_path / "scan.dcm", item.pixels.astype(np.uint16) * 8, Modality="CT", RescaleSlope=1,
                       RescaleIntercept=-1024, WindowCenter=-3.5, WindowWidth=2041)
    assert np.array_equal(np.asarray(render(pydicom.dcmread(path)).image), item.pixels)


def test_pydicoms_shipped_files_parse_into_the_right_series(tmp_path):
    folder = shutil.copytree(SHIPPED / "dicomdirtests", tmp_path / "dicomdirtests")
    expected: dict[tuple[str, str], set[str]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and "README" not in p.name):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if "SeriesInstanceUID" in ds:
            expected.setdefault((ds.StudyInstanceUID, ds.SeriesInstanceUID), set()).add(str(path.relative_to(folder)))
    studies, skipped = read_folder(folder, Deidentifier(b"k"), show_paths=True)
    series = [s for study in studies for s in study.series]
    assert sorted(sorted(i.file for i in s.instances) for s in series) == sorted(map(sorted, expected.values()))
    # studies: CR (3 series) and CT of one patient, CT (2 series), three MR studies (7 series), TINY_ALPHA
    assert (len(studies), len(series), sum(len(s.instances) for s in series)) == (7, 14, 81)
    assert sorted((s.reason, Path(s.file).name.split("-")[0]) for s in skipped) == [
        *[("no_series_uid", "DICOMDIR")] * 8, ("not_dicom", "README"), ("not_dicom", "README.txt")]
    ct = next(s for s in series if s.instances[0].file.startswith("77654033/CT2"))
    assert len(ct.instances) == 4 and ct.header.BodyPartExamined == "HEAD"
    cr = next(s for s in series if s.instances[0].file.startswith("77654033/CR1"))
    rendering = render(pydicom.dcmread(cr.middle().path))
    assert (rendering.photometric, rendering.window) == ("MONOCHROME1", (1600.0, 2800.0))


def test_bad_files_are_skipped_with_a_reason_and_a_partial_report_is_still_written(tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    for name in ("CT_small.dcm", "MR_truncated.dcm", "waveform_ecg.dcm"):
        shutil.copy(SHIPPED / name, study / name)
    (study / "notes.txt").write_text("hello", encoding="utf-8")
    (study / "random.dcm").write_bytes(os.urandom(2000))
    (study / "cut.dcm").write_bytes((SHIPPED / "MR_small.dcm").read_bytes()[:200])
    rows = b"\x28\x00\x10\x00US\x02\x00"  # (0028,0010) Rows, explicit VR US, 2 bytes
    ct = (SHIPPED / "CT_small.dcm").read_bytes()
    assert ct.count(rows) == 1
    (study / "bad_vr.dcm").write_bytes(ct.replace(rows, b"\x28\x00\x10\x00UL\x02\x00"))  # 2 bytes cannot be a UL
    with pytest.raises(CheckpointError):
        run_medical(study, tmp_path / "no-such-checkpoint", tmp_path / "out", key=b"k")
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert report["status"].startswith("incomplete: CheckpointError")
    assert sorted(s["reason"] for s in report["skipped"]) == [
        "deidentification_failed", "no_series_uid", "not_dicom", "not_dicom"]  # no_series_uid: the cut file
    statuses = sorted(s["status"] for study in report["studies"] for s in study["series"])
    assert statuses == ["no_pixel_data", "pending", "undecodable"]  # CT_small waits for the model
    assert (tmp_path / "out" / "thumbnails" / "series-000.png").is_file()
    with pytest.raises(DataError, match="does not exist"):
        run_medical(tmp_path / "missing", tmp_path / "no-such-checkpoint", tmp_path / "out2")


def test_a_file_that_does_not_parse_is_unreadable_and_its_error_text_stays_in(tmp_path, monkeypatch):
    (tmp_path / "a.dcm").write_bytes(b"x")

    def fail(*args, **kwargs):
        raise EOFError("value 'Doe^Secret' runs past the end")

    monkeypatch.setattr(pydicom, "dcmread", fail)
    _, [skipped] = read_folder(tmp_path, Deidentifier(b"k"))
    assert skipped.reason == "unreadable" and "Secret" not in skipped.detail and "EOFError" in skipped.detail


def test_cli_reports_on_a_study(tmp_path, checkpoint, capsys):
    study = tmp_path / "study"
    study.mkdir()
    shutil.copy(SHIPPED / "MR_small.dcm", study)
    assert main(["medical", str(study), "--model", str(checkpoint), "--out", str(tmp_path / "out"), "--lang", "en",
                 "--set", "max_new_tokens=3"]) == 0
    assert "1 studies, 1 series, 1 answered" in capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert report["prompt"].startswith("Describe the imaging findings")
    assert report["model"] == str(checkpoint) and report["studies"][0]["series"][0]["finish_reason"] == "length"
